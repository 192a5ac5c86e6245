#!/bin/bash
# pipeline: bash runs a generator into a `while read` loop that keeps a running sum;
# a process tree of bash, two subshells and the generator's sleeps.
#
#   bash examples/pipeline.sh [LINES]
n=${1:-40}
for i in $(seq 1 "$n"); do echo "$i"; sleep 0.05; done | while read -r x; do
	sum=$((sum + x))
	echo "line $x sum $sum"
done
echo "pipeline done"
