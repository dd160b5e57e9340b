#!/usr/bin/env bash
# ps.sh LABEL ROOTPID URL N CLIENT(curl|py) [header]: perf stat task-clock of the server tree per download
label=$1 root=$2 url=$3 n=$4 client=$5 hdr=${6:-X-None: 1}
pids=$(pstree -pT $root | grep -o '([0-9]*)' | tr -d '()' | sort -u | tr '\n' , | sed 's/,$//')
for i in $(seq 1 $n); do
  if [ $client = curl ]; then cmd=($PIN curl -sS -o /dev/null -H "$hdr" -w '%{size_download} %{time_total}' "$url"); else cmd=($PIN python3 /tmp/p15/lean.py "$url" "$hdr"); fi
  out=$(perf stat -x, -e task-clock,raw_syscalls:sys_enter,context-switches -p $pids -o /tmp/p15/ps.$$ -- "${cmd[@]}")
  set -- $out
  tc=$(awk -F, '/task-clock/{print $1}' /tmp/p15/ps.$$); sc=$(awk -F, '/sys_enter/{print $1}' /tmp/p15/ps.$$); cs=$(awk -F, '/context-sw/{print $1}' /tmp/p15/ps.$$)
  awk -v l="$label-$client" -v tc=$tc -v b=$1 -v t=$2 -v sc=$sc -v cs=$cs 'BEGIN{printf "%s\t%.3f\tcpu-s/GiB\t%.0f\tMB/s\t%d\tsyscalls/GiB\t%d\tcs/GiB\n", l, tc/1000/(b/2^30), b/t/1e6, sc/(b/2^30), cs/(b/2^30)}'
done
