# Developer convenience: every target is ./sendlab.sh TARGET, which needs no make.
SHARED ?= ../shared
export SHARED

.PHONY: setup demo test bench clean
setup demo test bench clean:
	./sendlab.sh $@
