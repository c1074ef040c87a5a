"""A test double for crosvm: crosvm's process contract on top of QEMU (TCG), for tests only.

The executable is `crosvm` in this directory; README.md says what it reproduces from
crosvm's source (commit f1e797a) and what it cannot. Stdlib only, so it runs under any
python3. Nothing outside tests/ may depend on it.

Modules, one job each: `base` (exit statuses, errors, crosvm's log format), `keyvalues`
(serde_keyvalue's grammar), `cmdline` (argh's parse of the command line), `config` (the
checks crosvm makes on a parsed configuration, exit 1), `qmp` (a QMP client), `vm` (the
VM on QEMU and its control server), `control` (the control subcommands' client side),
`faults` (failures the tests ask for), `main` (the entry point), `triple_fault` (a tiny
kernel that triple-faults, for tests).
"""
