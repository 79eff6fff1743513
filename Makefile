# Entry points. `make run` and `make test` are the two commands in the README.
PY := .venv/bin/python

.PHONY: setup run test lock download bench clean wheel
setup:            ## create .venv with the locked dependency tree (idempotent)
	@bash scripts/setup.sh

run: setup        ## run the whole pipeline on the default data
	@$(PY) -m pipeline run $(ARGS)

test: setup       ## the test suite CI runs
	@$(PY) -m pytest $(ARGS)

lock:             ## regenerate requirements.lock (pyproject.toml) and kubeflow/requirements-gpu.lock
	@bash scripts/setup.sh --lock

download:         ## fetch canonical MNIST into the cache (needs internet)
	@$(PY) -m components.download $(ARGS)

wheel: setup      ## the project's wheel in dist/: what remote Beam workers install (docs/kubeflow.md)
	@$(PY) -m pipeline wheel --out dist

clean:            ## remove pipeline outputs (keeps .venv)
	rm -rf outputs

# The Kubeflow pipeline image (kubeflow/Dockerfile; docs/kubeflow.md). Push it where the
# cluster can pull it and compile with `--image` (`--gpu-image` for the GPU=1 variant).
IMAGE ?= mnist-tfx:latest
GPU ?= 0
.PHONY: image
image:            ## build the Kubeflow pipeline image: make image IMAGE=registry/mnist-tfx:tag [GPU=1]
	docker build -f kubeflow/Dockerfile -t $(IMAGE) --platform linux/amd64 \
	  --build-arg VARIANT=$(if $(filter 1 yes true,$(GPU)),gpu,cpu) .
