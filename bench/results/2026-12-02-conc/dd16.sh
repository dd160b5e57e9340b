#!/usr/bin/env bash
d=/tmp/p15/dd; mkdir -p $d; sync
t0=$(date +%s.%N)
for i in $(seq -w 0 15); do dd if=/tmp/p15/src/random-64MiB-$i.bin of=$d/o$i.$$ bs=1M conv=fsync status=none & done; wait
t1=$(date +%s.%N)
rm -f $d/o*.$$; awk -v t0=$t0 -v t1=$t1 'BEGIN{printf "dd16\t%.0f\tMB/s\n", 2^30/(t1-t0)/1e6}'
