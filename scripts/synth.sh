#!/usr/bin/env bash
# Take a run's firmware projects through the vendor tools (hw/Makefile), then summarise the reports.
# Usage: scripts/synth.sh RUN [--board B] [--clock-ns NS] [--flow hls4ml|finn|all]
#                             [--steps csim,csynth,cosim,export,synth,impl]
#   RUN/firmware/hls4ml/ (hls4ml project): C simulation, C synthesis, C/RTL co-simulation, IP export,
#     out-of-context synthesis and implementation (default: all of them).
#   RUN/firmware/finn/stitched_ip/ (FINN's stitched IP): out-of-context synthesis and implementation.
#   --board: a preset (zcu104, u250, pynq-z2), a board YAML or a part number; default: RUN/hw/board.json,
#   else the part of the hls4ml project. Reports land in RUN/hw/; `edgestem synth-report RUN` reads them.
# Needs vivado and one of vitis-run / vitis_hls / vivado_hls on PATH; without them it stops with one line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "synth: $*" >&2; exit 2; }

run="" board="" clock="" flow="all" steps="csim,csynth,cosim,export,impl"
while [ $# -gt 0 ]; do
  case "$1" in
    --board) board="${2:?--board needs a value}"; shift 2 ;;
    --clock-ns) clock="${2:?--clock-ns needs a value}"; shift 2 ;;
    --flow) flow="${2:?--flow needs a value}"; shift 2 ;;
    --steps) steps="${2:?--steps needs a value}"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see scripts/synth.sh --help)" ;;
    *) [ -z "$run" ] || die "one run directory only (got $run and $1)"; run="$1"; shift ;;
  esac
done
[ -n "$run" ] || die "usage: scripts/synth.sh RUN [--board B] [--clock-ns NS] [--flow hls4ml|finn|all] [--steps ...]"
[ -d "$run" ] || die "run directory $run does not exist"
case "$flow" in hls4ml|finn|all) ;; *) die "--flow $flow: choose hls4ml, finn or all" ;; esac
for s in ${steps//,/ }; do
  case "$s" in csim|csynth|cosim|export|synth|impl) ;; *) die "--steps: unknown step '$s' (csim, csynth, cosim, export, synth, impl)" ;; esac
done

has_hls4ml=0 has_finn=0
[ -f "$run/firmware/hls4ml/project.tcl" ] && has_hls4ml=1
compgen -G "$run/firmware/finn/stitched_ip/*.xpr" > /dev/null && has_finn=1
if [ "$flow" = hls4ml ] && [ $has_hls4ml = 0 ]; then
  die "no hls4ml project in $run/firmware/hls4ml (project.tcl): generate the hls4ml firmware first"
fi
if [ "$flow" = finn ] && [ $has_finn = 0 ]; then
  die "no FINN stitched IP in $run/firmware/finn/stitched_ip: run FINN up to its stitched-IP step (needs Vivado)"
fi
[ "$flow" = finn ] && has_hls4ml=0
[ "$flow" = hls4ml ] && has_finn=0
if [ $has_hls4ml = 0 ] && [ $has_finn = 0 ]; then
  die "no firmware project under $run/firmware (hls4ml/project.tcl or finn/stitched_ip/*.xpr): generate the firmware first"
fi

targets=() need_hls=0 need_vivado=0
if [ $has_hls4ml = 1 ]; then
  for s in ${steps//,/ }; do
    targets+=("hls4ml-$s")
    case "$s" in synth|impl) need_vivado=1 ;; *) need_hls=1 ;; esac
  done
  # Vivado synthesis reads the Verilog of C synthesis: without it, the HLS tool runs first.
  [ -f "$run/hw/hls4ml/.csynth.done" ] || need_hls=1
fi
if [ $has_finn = 1 ]; then
  for s in ${steps//,/ }; do
    case "$s" in synth|impl) targets+=("finn-$s"); need_vivado=1 ;; esac
  done
fi
[ ${#targets[@]} -gt 0 ] || die "--steps $steps has nothing to do for the FINN project (it takes synth, impl)"

get_tools="install AMD Vivado / Vitis (https://www.amd.com/en/products/software/adaptive-socs-and-fpgas/vivado.html) and source its settings64.sh"
hls=""
if [ $need_hls = 1 ]; then
  for t in vitis-run vitis_hls vivado_hls; do
    if command -v "$t" > /dev/null 2>&1; then hls="$t"; break; fi
  done
  [ -n "$hls" ] || die "no HLS tool on PATH (vitis-run, vitis_hls or vivado_hls) for ${steps}: $get_tools"
fi
if [ $need_vivado = 1 ]; then
  command -v vivado > /dev/null 2>&1 || die "vivado is not on PATH (needed for synth/impl): $get_tools"
fi

python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
# The board of the last synthesis of this run (with its clock) unless another is asked for.
[ -z "$board" ] && [ -f "$run/hw/board.json" ] && board="$(cd "$run" && pwd)/hw/board.json"
if [ -z "$board" ] && [ $has_hls4ml = 1 ]; then
  board=$(sed -n 's/^set part "\(.*\)"/\1/p' "$run/firmware/hls4ml/project.tcl")
fi
[ -n "$board" ] || die "give --board (zcu104, u250, pynq-z2 or a part number): the FINN project's part is not known here"
# A bad --board or --clock-ns stops here with one line, before any tool starts.
"$python" -m edgestem.targets.boards "$board" ${clock:+--clock-ns "$clock"} > /dev/null || exit 2

make_args=(-f "$root/hw/Makefile" "RUN=$(cd "$run" && pwd)" "PYTHON=$python" "BOARD=$board")
[ -n "$clock" ] && make_args+=("CLOCK_NS=$clock")
[ -n "$hls" ] && make_args+=("HLS=$hls")
make "${make_args[@]}" "${targets[@]}"
"$python" -m edgestem.cli synth-report "$run"
