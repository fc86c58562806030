#!/usr/bin/env bash
# Offline checks of everything under deploy/ and grafana/, each by the real tool:
#   systemd-analyze verify + security budget, systemd-sysusers --dry-run,
#   promtool check config / check rules / test rules,
#   kubernetes-validate --strict (Kubernetes 1.28 and 1.37 schemas),
#   the Grafana dashboards regenerated and compared, their queries parsed by promtool.
#
# Usage: scripts/ci-deploy-checks.sh [PYTHON]
#   PYTHON: an interpreter with kubernetes-validate and PyYAML installed
#   (default: $PYTHON, else .venv-test/bin/python, else python3).
# Needs: systemd-analyze and systemd-sysusers (Debian package systemd), promtool
# (Debian package prometheus). Exits non-zero on the first failing check.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${1:-${PYTHON:-}}
if [ -z "$PY" ]; then
  if [ -x .venv-test/bin/python ]; then PY=.venv-test/bin/python; else PY=python3; fi
fi
EXPOSURE_BUDGET=15  # systemd-analyze security, x10: 1.5 ("OK") today; keep in step with tests
UNIT=deploy/systemd/gpu-watchdog.service

step() { printf '== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || fail "$1 not found (install Debian package $2)"; }

need systemd-analyze systemd
need systemd-sysusers systemd
need promtool prometheus
"$PY" -c 'import kubernetes_validate, yaml' 2>/dev/null \
  || fail "$PY lacks kubernetes-validate (pip install kubernetes-validate)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "systemd-analyze verify $UNIT"
# verify checks that ExecStart and ExecReload exist, so it runs on a root made of this
# machine's units, the unit, and stand-ins for /opt/gpu-watchdog/bin/gpu-watchdog and /bin/kill.
root=$work/root
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
if [ -d /usr/lib/systemd/system ]; then units=/usr/lib/systemd/system; else units=/lib/systemd/system; fi
cp -a "$units" "$root/usr/lib/systemd/system"
cp "$UNIT" "$root/etc/systemd/system/"
for exe in $(sed -n 's/^Exec\(Start\|Reload\)=\([^ ]*\).*/\2/p' "$UNIT"); do
  mkdir -p "$root$(dirname "$exe")"
  printf '#!/bin/sh\n' > "$root$exe"
  chmod 755 "$root$exe"
done
out=$(systemd-analyze verify --root="$root" --man=no --generators=no \
  "$root/etc/systemd/system/$(basename "$UNIT")" 2>&1) || fail "systemd-analyze verify: $out"
# Unknown keys and bad values are only warnings with exit status 0: any output fails.
[ -z "$out" ] || fail "systemd-analyze verify warned: $out"

step "systemd-analyze security --offline (budget $EXPOSURE_BUDGET)"
systemd-analyze security --offline=true --threshold=$EXPOSURE_BUDGET --no-pager "$UNIT" \
  | tail -n 1 || fail "security exposure over budget"

step "systemd-sysusers --dry-run"
systemd-sysusers --dry-run --root="$work/sysusers-root" \
  "$PWD/deploy/systemd/gpu-watchdog.sysusers.conf"

step "promtool check config / rules / test rules"
(cd deploy/prometheus && promtool check config prometheus.yml)
(cd deploy/prometheus && promtool check rules gpu-watchdog-alerts.yml)
(cd deploy/prometheus && promtool test rules tests/*.test.yml)  # every alert's cases

step "kubernetes-validate --strict"
for version in 1.28.0 1.37.0; do
  # ServiceMonitor and PrometheusRule are CRDs: no schema ships for them (a warning);
  # tests/test_deploy_kubernetes.py checks them against the Service and the rule file.
  "$PY" -m kubernetes_validate --strict --quiet -k "$version" deploy/kubernetes/*.yaml
done

step "Grafana dashboards: generated, queries parsed by promtool"
"$PY" grafana/build_dashboards.py --check
"$PY" - "$work/dashboards.rules.yml" <<'EOF'
import json, pathlib, re, sys, yaml
values = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
rules = []
for path in sorted(pathlib.Path("grafana/dashboards").glob("*.json")):
    board = json.loads(path.read_text())
    exprs = [t["expr"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    for n, expr in enumerate(exprs):
        for name, value in values.items():
            expr = expr.replace(name, value)
        expr = re.sub(r"\$\{?(\w+)\}?", ".*", expr)
        rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}:{n}", "expr": expr})
pathlib.Path(sys.argv[1]).write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
EOF
promtool check rules "$work/dashboards.rules.yml"

step "all deploy checks passed"
