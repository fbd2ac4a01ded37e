# One entry point per job; every target sets up .venv itself (scripts/setup.sh, idempotent).
VENV   := .venv
PY     := $(VENV)/bin/python
# A virtual screen when there is no display (napari needs a real OpenGL context).
XRUN   := $(if $(DISPLAY),,xvfb-run -a -s "-screen 0 1600x1000x24")
OUT    ?= out
STEPS  ?= 200

.PHONY: setup demo demo-smoke headless headless-sam test lint bench docs clean

setup:
	@scripts/setup.sh

## napari with the plugin docked and sample data loaded (SMOKE=1: screenshot to $(OUT)/ and quit)
demo: setup
	$(if $(SMOKE),$(XRUN)) $(PY) -m napari_cellsparse._napari.demo $(if $(SMOKE),--smoke $(OUT)/demo.png)

demo-smoke:
	@$(MAKE) --no-print-directory demo SMOKE=1

## the same pipeline with no window
## offline pipeline: train a U-Net on the sample's sparse annotation, predict, write TIFF + CSV
headless: setup
	$(VENV)/bin/cellsparse train --backend unet --image sample:nuclei --labels sample:nuclei \
		--name sample-unet --reset --steps $(STEPS)
	$(VENV)/bin/cellsparse predict --model sample-unet --image sample:nuclei --out $(OUT)/predict

headless-sam: setup
	$(VENV)/bin/cellsparse sam --image sample:nuclei --boxes sample_data/nuclei_boxes.csv \
		--model vit_t --out $(OUT)/sam $(if $(WEIGHTS),--weights $(WEIGHTS))

## the whole test suite under a virtual screen
test: setup
	$(XRUN) $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(XRUN) $(PY) benchmarks/sam_prompt.py

docs: setup
	$(XRUN) $(PY) docs/make_screenshots.py

clean:
	rm -rf $(VENV) dist build $(OUT)
