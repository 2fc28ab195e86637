# mailgateway: `make run` starts a development gateway, `make test` runs
# every test.  Both create the virtualenv and install what they need.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STATE := dev-state
DEV_CONFIG := etc/dev.toml
DEV_CERT := $(DEV_STATE)/certs/server.pem
DEV_USERS := $(DEV_STATE)/users.json
DEMO_ACCOUNT := demo@example.test
DEMO_PASSWORD := demo-password

TEST_STAMP := $(VENV)/.installed-test

# Debian packages of the programs the end-to-end tests drive for real, and
# the Kerberos headers the gssapi package compiles against.
TEST_PACKAGES := openssl \
    libkrb5-dev krb5-kdc krb5-admin-server krb5-user \
    gsasl cyrus-clients libsasl2-modules libsasl2-modules-otp libsasl2-modules-gssapi-mit \
    swaks libnet-ssleay-perl msmtp curl fetchmail getmail6 \
    isync offlineimap3

.PHONY: run test check lint venv dev-certs clean

$(BIN)/python:
	@# Debian's python3 needs python3-venv for "python3 -m venv".
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || tools/ensure-debian-packages python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Editable in "compat" mode: the checkout is on sys.path, so twistd finds
# twisted/plugins/mailgateway_plugin.py from any directory.
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e . --config-settings editable_mode=compat
	@touch $@

# The test extras (and the lint one: tests/test_lint.py runs ruff and mypy);
# gssapi builds against libkrb5-dev, so the Debian packages come first.
$(TEST_STAMP): $(STAMP)
	tools/ensure-debian-packages $(TEST_PACKAGES)
	$(BIN)/pip install -q -e '.[test,gssapi,lint]' --config-settings editable_mode=compat
	@touch $@

venv: $(STAMP)

$(DEV_CERT): | $(STAMP)
	$(BIN)/mailgateway certs init --hostname localhost --out $(DEV_STATE)/certs

dev-certs: $(DEV_CERT)

# The demo account of README's quick start, with the legacy mechanisms
# enabled so that every SASL mechanism can be tried against it.
$(DEV_USERS): | $(STAMP)
	printf '%s\n' '$(DEMO_PASSWORD)' | $(BIN)/mailgateway user add $(DEMO_ACCOUNT) \
	    --users $@ --password-stdin --legacy CRAM-MD5,DIGEST-MD5,APOP

check: $(STAMP) $(DEV_CERT) $(DEV_USERS)
	$(BIN)/mailgateway check $(DEV_CONFIG)

run: check
	exec $(BIN)/twistd -n --pidfile= mailgateway --config $(DEV_CONFIG)

test: $(TEST_STAMP)
	@tools/ensure-debian-packages $(TEST_PACKAGES)
	@mkdir -p _trial_temp.log
	@set +e; $(BIN)/python -m twisted.trial --temp-directory=_trial_temp -j2 tests 2>&1 \
	    | tee _trial_temp.log/output.txt; \
	    status=$${PIPESTATUS[0]}; \
	    $(BIN)/python tools/trial_summary.py $$status _trial_temp.log/output.txt

# ruff and mypy (with the zope plugin) must pass; make test runs both too
# (tests/test_lint.py).
lint: $(STAMP)
	$(BIN)/pip install -q -e '.[lint]' --config-settings editable_mode=compat
	$(BIN)/ruff check gateway tests twisted tools bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) _trial_temp* *.egg-info build dist
