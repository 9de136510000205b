# make test / make demo create .venv and install the package with the tested pins when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: test demo install fmnist clean-venv

$(VENV)/.installed: setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23"
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

fmnist:
	@test -f $(FMNIST) || (echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	  (apt-get install -y -q dataset-fashion-mnist || sudo apt-get install -y -q dataset-fashion-mnist) >/dev/null)

demo: $(VENV)/.installed fmnist
	$(PY) train.py --c config/demo/cfsg_fmnist.yaml

clean-venv:
	rm -rf $(VENV)
