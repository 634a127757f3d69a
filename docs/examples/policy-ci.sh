#!/bin/sh
# The checks a policy repository runs on every change (docs/deployment.md, "Policy changes in
# your CI"). Run from the repository's root, with `smart-proxy` installed. Layout:
#   policies.toml                 the policy file the sidecar mounts
#   scenarios/*.toml              hand-written scenarios (docs/policy.md)
#   orderings.json                `policy snapshot` output, committed
#   traces/week.jsonl             a `trace export` of real traffic, committed
#   traces/week.baseline.json     `simulate --json` output, committed
# After an intended change, refresh the two committed outputs and commit them with the edit:
#   smart-proxy policy snapshot policies.toml --scenarios scenarios -o orderings.json
#   smart-proxy simulate --trace traces/week.jsonl --policy policies.toml --json traces/week.baseline.json
set -eu
smart-proxy policy check policies.toml
smart-proxy policy snapshot policies.toml --scenarios scenarios --check orderings.json
smart-proxy simulate --trace traces/week.jsonl --policy policies.toml --check traces/week.baseline.json
