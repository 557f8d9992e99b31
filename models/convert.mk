# models/convert.mk: the checkpoint converter and weight fetcher (Python, no build step).
#   make test-convert            converter/fetcher tests (tests/convert/, no torch needed;
#                                extra cross-checks run when build/refvenv has demucs)
#   make get-weights MODEL=NAME  fetch + convert an official model into models/weights/
TEST_SUITES += test-convert

MODEL ?= htdemucs

.PHONY: test-convert get-weights
test-convert:
	@REFVENV=$(REFVENV) $(PY) tests/convert/test_convert.py

get-weights:
	@models/get-weights $(MODEL)
