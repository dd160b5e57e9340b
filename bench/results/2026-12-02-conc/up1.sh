#!/usr/bin/env bash
label=$1 pid=$2 port=$3 tok=$4
sync
out=$(perf stat -x, -e task-clock,context-switches -p $pid -o /tmp/p15/up.$$ -- curl -sS -o /dev/null -H "Authorization: Bearer $tok" -H 'Expect:' -F "file=@/tmp/p15/src/random-1GiB.bin;type=application/octet-stream" -w '%{http_code} %{time_total}' "http://127.0.0.1:$port/api/files/upload")
set -- $out
tc=$(awk -F, '/task-clock/{print $1}' /tmp/p15/up.$$); cs=$(awk -F, '/context-sw/{print $1}' /tmp/p15/up.$$)
awk -v l=$label -v c=$1 -v t=$2 -v tc=$tc -v cs=$cs 'BEGIN{printf "%s-1GiB\t%s\t%.0f\tMB/s\t%.2f\tcpu-s/GiB\t%d\tcs\n", l, c, 2^30/t/1e6, tc/1000, cs}'
