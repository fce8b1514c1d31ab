# The two set-up commands of README.md. Each creates .venv from nothing when needed.
.PHONY: demo test test-slow lint clean

demo:          ## the whole pipeline of configs/demo.yaml (simulate ... firmware, report), then info and plots (runs/demo/)
	scripts/demo.sh

test:          ## install and run the fast test suite
	scripts/test.sh

test-slow:     ## the slow tests too
	scripts/test.sh -m "slow or not slow"

lint:
	.venv/bin/ruff check edgestem tests benchmarks && .venv/bin/ruff format --check edgestem tests benchmarks

clean:
	rm -rf .venv runs .pytest_cache
