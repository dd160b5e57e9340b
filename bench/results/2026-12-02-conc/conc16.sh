#!/usr/bin/env bash
# conc.sh LABEL PID PORT TOKEN : 16 x 64 MiB curl --parallel upload; server task-clock, wall, peak RSS
label=$1 pid=$2 port=$3 tok=$4
args=(curl -sS --parallel --parallel-immediate --parallel-max 16 --no-progress-meter)
for i in $(seq -w 0 15); do
  [ $i != 00 ] && args+=(--next)
  args+=(-o /dev/null -H "Authorization: Bearer $tok" -H 'Expect:' -F "file=@/tmp/p15/src/random-64MiB-$i.bin;type=application/octet-stream" -w '%{http_code}\n' "http://127.0.0.1:$port/api/files/upload")
done
sync
echo 5 > /proc/$pid/clear_refs
t0=$(date +%s.%N)
codes=$(perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p $pid -o /tmp/p15/conc.$$ -- "${args[@]}" | sort | uniq -c | tr '\n' ' ')
t1=$(date +%s.%N)
hwm=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
tc=$(awk -F, '/task-clock/{print $1}' /tmp/p15/conc.$$); cs=$(awk -F, '/context-sw/{print $1}' /tmp/p15/conc.$$); sc=$(awk -F, '/sys_enter/{print $1}' /tmp/p15/conc.$$)
awk -v l=$label -v t0=$t0 -v t1=$t1 -v tc=$tc -v h=$hwm -v cs=$cs -v sc=$sc -v c="$codes" 'BEGIN{printf "%s\t%.0f\tMB/s\t%.2f\tcpu-s/GiB\t%.1f\tMiB-HWM\t%d\tcs\t%d\tsyscalls\t%s\n", l, 2^30/(t1-t0)/1e6, tc/1000, h/1024, cs, sc, c}'
