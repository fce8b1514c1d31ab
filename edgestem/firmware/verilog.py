"""Verilog-2001 of an :class:`~edgestem.export.intnet.IntNet`: a layer-sequential encoder and its testbench.

The design (``encoder.v``) is the "small and slow" end of the design space: one engine per layer,
each with ONE multiply-accumulate unit, the layers running one after another.

- The input arrives as one unsigned integer per cycle (``in_valid``/``in_data``, row-major),
  while ``in_ready`` is high; the whole pattern goes into an on-chip RAM, then the layers run.
- A layer engine walks ``c_out, y, x, [pool dy, dx], c_in, ky, kx`` and issues one multiply per
  cycle into a 4-stage pipeline: (1) feature-map RAM and weight ROM reads (registered, so both map
  to block RAM), (2) the product, (3) the accumulator (the bias enters with the first product),
  (4) the requantizer (shift rounding half to even, clip) and the running maximum of the 2 x 2
  pool window; the pooled result goes into the next layer's RAM. Out-of-image taps ('same'
  padding) read zero. A dense layer is the same engine over a 1 x 1 image with ``N_in`` channels;
  the RAM it reads is addressed ``(c * H + y) * W + x``, PyTorch's flatten order.
- The last layer's four results leave on ``out_valid``/``out_data`` (signed, in order), after
  which ``in_ready`` rises again.

Latency is about one cycle per MAC: ``H * W + sum(MACs + 4) + 1`` cycles
(:func:`latency_cycles`). The testbench (``tb_encoder.v``) reads patterns from a text file (one
integer per line, ``+in=FILE``), writes four outputs and the cycle count per pattern
(``+out=FILE``); under Verilator the clock comes from its timing scheduler (``--binary``).
"""

from __future__ import annotations

import numpy as np

from edgestem.export.intnet import IntNet, Layer, bits_for

TOP = "encoder"
TB = "tb_encoder"
PIPELINE = 4  # cycles from issue to the pooled write


def _lit(value: int, width: int) -> str:
    """A sized signed Verilog literal."""
    return f"-{width}'sd{-value}" if value < 0 else f"{width}'sd{value}"


def _cmul(expr: str, c: int) -> str:
    """``expr * c`` as shifts and adds (constant multiplications would otherwise take DSPs in yosys)."""
    if c == 0:
        return "0"
    terms = [f"({expr} << {k})" if k else f"({expr})" for k in range(c.bit_length()) if c >> k & 1]
    return terms[0] if len(terms) == 1 else "(" + " + ".join(terms) + ")"


def _counters(loops: list[tuple[str, int]]) -> str:
    """Nested wrap-around counters, innermost last; the outermost one's wrap ends the run."""
    lines = []
    depth = len(loops)
    for i in reversed(range(depth)):
        name, n = loops[i]
        pad = "      " + "  " * (depth - 1 - i)
        lines.append(f"{pad}if ({name} == {n - 1}) begin")
        lines.append(f"{pad}  {name} <= 0;")
    inner = "      " + "  " * depth
    lines.append(f"{inner}issue <= 1'b0;")
    for i in range(depth):
        name, n = loops[i]
        pad = "      " + "  " * (depth - 1 - i)
        lines.append(f"{pad}end else begin")
        lines.append(f"{pad}  {name} <= {name} + 1'b1;")
        lines.append(f"{pad}end")
    return "\n".join(lines)


def layer_module(layer: Layer, in_aw: int, out_aw: int) -> str:
    """One layer engine: reads the previous feature map RAM, writes the next one (see module docstring)."""
    c_out, c_in, k, _ = layer.weight.shape
    _, h, w = layer.in_shape
    p = layer.pool
    oc, oh, ow = layer.out_shape
    pad = k // 2
    ib, wb, aw, ob = layer.in_bits, layer.weight_bits, layer.acc_bits, layer.out_bits
    bb = max(int(np.abs(layer.bias).max(initial=0)).bit_length() + 1, 2)
    pw = ib + 1 + wb
    n_w = int(layer.weight.size)
    wab = bits_for(n_w)
    loops = [("co", c_out), ("py", oh), ("px", ow)]
    if p > 1:
        loops += [("dy", p), ("dx", p)]
    loops += [("ci", c_in), ("ky", k), ("kx", k)]
    loops = [(n, m) for n, m in loops if m > 1] or [("kx", 1)]
    counted = {n for n, _ in loops}
    decl = "\n".join(f"  reg [{bits_for(m) - 1}:0] {n};" for n, m in loops)
    zero = {n: "1'b0" for n in ("co", "py", "px", "dy", "dx", "ci", "ky", "kx") if n not in counted}
    v = {n: zero.get(n, n) for n in ("co", "py", "px", "dy", "dx", "ci", "ky", "kx")}

    def at_end(names: list[str]) -> str:
        terms = [f"({n} == {m - 1})" for n, m in loops if n in names]
        return " && ".join(terms) if terms else "1'b1"

    first = " && ".join(f"({n} == 0)" for n, _ in loops if n in ("ci", "ky", "kx")) or "1'b1"
    last = at_end(["ci", "ky", "kx"])
    pfirst = " && ".join(f"({n} == 0)" for n, _ in loops if n in ("dy", "dx")) or "1'b1"
    plast = at_end(["dy", "dx"])
    end_all = at_end([n for n, _ in loops])
    # width of coordinate and address arithmetic: every address and coordinate fits
    cw = max(wab, in_aw, out_aw, bits_for(max(h, w) + 2 * pad + p), bits_for(c_in * h * w)) + 2
    iy = f"{_cmul(v['py'], p)} + {v['dy']} + {v['ky']}"
    ix = f"{_cmul(v['px'], p)} + {v['dx']} + {v['kx']}"
    iaddr = _cmul(f"({_cmul(v['ci'], h)} + (iy - {pad}))", w) + f" + (ix - {pad})"
    wrow = f"({_cmul(v['co'], c_in)} + {v['ci']})"
    waddr = _cmul(f"({_cmul(wrow, k)} + {v['ky']})", k) + f" + {v['kx']}"
    oaddr = _cmul(f"({_cmul(v['co'], oh)} + {v['py']})", ow) + f" + {v['px']}"
    weights = "\n".join(f"    wrom[{i}] = {_lit(int(val), wb)};" for i, val in enumerate(layer.weight.reshape(-1)))
    biases = "\n".join(f"      {i}: bias_v = {_lit(int(val), bb)};" for i, val in enumerate(layer.bias))
    r = layer.shift
    if r > 0:
        low = f"(|acc[{r - 2}:0])" if r > 1 else "1'b0"
        requant = (
            f"  wire signed [{aw - 1}:0] q_floor = acc >>> {r};\n"
            f"  wire q_up = acc[{r - 1}] & ({low} | q_floor[0]);  // above half, or half and odd: half to even\n"
            f"  wire signed [{aw}:0] q_round = q_floor + $signed({{1'b0, q_up}});"
        )
    else:
        requant = f"  wire signed [{aw + (-r)}:0] q_round = acc <<< {-r};  // sign-extended to the wider result first"
    qw = aw + 1 + max(0, -r)
    lo, hi = layer.out_lo, layer.out_hi
    return f"""
// {layer.name}: {c_in} x {h} x {w} -> {oc} x {oh} x {ow}, kernel {k}, pool {p}, shift {r}, clip [{lo}, {hi}]
module {layer.name} (
  input clk,
  input rst,
  input start,
  output reg done,
  output [{in_aw - 1}:0] in_addr,
  input [{ib - 1}:0] in_data,
  output reg out_we,
  output reg [{out_aw - 1}:0] out_addr,
  output reg [{ob - 1}:0] out_data
);
  reg issue;
{decl}
  // stage 0: addresses ('same' padding: out-of-image taps read zero)
  wire [{cw - 1}:0] iy = {iy};
  wire [{cw - 1}:0] ix = {ix};
  wire in_img = (iy >= {pad}) && (iy < {h + pad}) && (ix >= {pad}) && (ix < {w + pad});
  wire [{cw - 1}:0] iaddr = {iaddr};
  wire [{cw - 1}:0] waddr = {waddr};
  wire [{cw - 1}:0] oaddr = {oaddr};
  assign in_addr = in_img ? iaddr[{in_aw - 1}:0] : {in_aw}'d0;

  reg signed [{wb - 1}:0] wrom [0:{n_w - 1}];
  initial begin
{weights}
  end

  function signed [{bb - 1}:0] bias_v;
    input [{bits_for(c_out) - 1}:0] c;
    begin
      case (c)
{biases}
      default: bias_v = {bb}'sd0;
      endcase
    end
  endfunction

  always @(posedge clk) begin
    if (rst) begin
      issue <= 1'b0;
    end else if (start) begin
      issue <= 1'b1;
{chr(10).join(f"      {n} <= 0;" for n, _ in loops)}
    end else if (issue) begin
{_counters(loops)}
    end
  end

  // stage 1: weight ROM and feature-map RAM reads
  reg signed [{wb - 1}:0] w1;
  reg v1, in1, f1, l1, pf1, pl1, e1;
  reg [{bits_for(c_out) - 1}:0] c1;
  reg [{out_aw - 1}:0] o1;
  always @(posedge clk) begin
    w1 <= wrom[waddr[{wab - 1}:0]];
    v1 <= issue & ~rst;
    in1 <= in_img;
    f1 <= {first};
    l1 <= {last};
    pf1 <= {pfirst};
    pl1 <= {plast};
    e1 <= {end_all};
    c1 <= {v["co"]};
    o1 <= oaddr[{out_aw - 1}:0];
  end

  // stage 2: product
  reg signed [{pw - 1}:0] prod2;
  reg v2, f2, l2, pf2, pl2, e2;
  reg [{bits_for(c_out) - 1}:0] c2;
  reg [{out_aw - 1}:0] o2;
  always @(posedge clk) begin
    prod2 <= in1 ? $signed({{1'b0, in_data}}) * w1 : {pw}'sd0;
    v2 <= v1 & ~rst;
    {{f2, l2, pf2, pl2, e2, c2, o2}} <= {{f1, l1, pf1, pl1, e1, c1, o1}};
  end

  // stage 3: accumulate (bias with the first product)
  reg signed [{aw - 1}:0] acc;
  reg v3, pf3, pl3, e3;
  reg [{out_aw - 1}:0] o3;
  always @(posedge clk) begin
    if (v2) acc <= (f2 ? bias_v(c2) : acc) + prod2;
    v3 <= v2 & l2 & ~rst;
    {{pf3, pl3, e3, o3}} <= {{pf2, pl2, e2, o2}};
  end

  // stage 4: requantize (round half to even, clip) and 2 x 2 max pool
{requant}
  wire [{ob - 1}:0] q = (q_round < {_lit(lo, qw + 1)}) ? {_lit(lo, ob)} :
                        (q_round > {_lit(hi, qw + 1)}) ? {_lit(hi, ob)} : q_round[{ob - 1}:0];
  reg [{ob - 1}:0] pmax;
  wire [{ob - 1}:0] m = (pf3 || {"$signed(q) > $signed(pmax)" if layer.out_signed else "q > pmax"}) ? q : pmax;
  always @(posedge clk) begin
    out_we <= 1'b0;
    done <= 1'b0;
    if (rst) begin
      out_we <= 1'b0;
    end else if (v3) begin
      pmax <= m;
      if (pl3) begin
        out_we <= 1'b1;
        out_addr <= o3;
        out_data <= m;
        done <= e3;
      end
    end
  end
endmodule
"""


def ram_words(net: IntNet) -> list[int]:
    """Words of each feature-map RAM: the input, then each layer's output except the last."""
    words = [int(np.prod(net.in_shape))]
    words += [int(np.prod(la.out_shape)) for la in net.layers[:-1]]
    return words


def top_module(net: IntNet) -> str:
    """The top: input RAM, layer engines in sequence, RAMs between them, output stream."""
    words = ram_words(net)
    bits = [net.in_bits] + [la.out_bits for la in net.layers[:-1]]
    aws = [bits_for(n) for n in words]
    last = net.layers[-1]
    n_out = int(np.prod(last.out_shape))
    oaw = bits_for(n_out)
    parts = [
        f"""
// {TOP}: {len(net.layers)} layers, {net.macs} MACs, one MAC unit per layer, layers in sequence
module {TOP} (
  input clk,
  input rst,
  input in_valid,
  input [{net.in_bits - 1}:0] in_data,
  output in_ready,
  output out_valid,
  output signed [{last.out_bits - 1}:0] out_data,
  output out_last
);
  reg busy;
  reg [{aws[0] - 1}:0] load_addr;
  assign in_ready = ~busy;
  wire load = in_valid & ~busy;
  wire [{len(net.layers) - 1}:0] done;
"""
    ]
    for i, (n, b, aw) in enumerate(zip(words, bits, aws, strict=True)):
        writer = ("load", "load_addr", "in_data") if i == 0 else (f"we{i}", f"wa{i}", f"wd{i}")
        decl = "" if i == 0 else f"  wire we{i};\n  wire [{aw - 1}:0] wa{i};\n  wire [{b - 1}:0] wd{i};\n"
        parts.append(
            f"""{decl}  wire [{aw - 1}:0] ra{i};
  reg [{b - 1}:0] rd{i};
  reg [{b - 1}:0] ram{i} [0:{n - 1}];
  always @(posedge clk) begin
    if ({writer[0]}) ram{i}[{writer[1]}] <= {writer[2]};
    rd{i} <= ram{i}[ra{i}];
  end
"""
        )
    parts.append(
        f"""  wire we_out;
  wire [{oaw - 1}:0] wa_out;
  wire [{last.out_bits - 1}:0] wd_out;
  always @(posedge clk) begin
    if (rst) begin
      busy <= 1'b0;
      load_addr <= 0;
    end else if (load) begin
      if (load_addr == {words[0] - 1}) begin
        busy <= 1'b1;
        load_addr <= 0;
      end else begin
        load_addr <= load_addr + 1'b1;
      end
    end else if (done[{len(net.layers) - 1}]) begin
      busy <= 1'b0;
    end
  end
  wire start0 = load && (load_addr == {words[0] - 1});
"""
    )
    for i, la in enumerate(net.layers):
        start = "start0" if i == 0 else f"done[{i - 1}]"
        out = ("we_out", "wa_out", "wd_out") if i == len(net.layers) - 1 else (f"we{i + 1}", f"wa{i + 1}", f"wd{i + 1}")
        parts.append(
            f"""  {la.name} u_{la.name} (
    .clk(clk), .rst(rst), .start({start}), .done(done[{i}]),
    .in_addr(ra{i}), .in_data(rd{i}),
    .out_we({out[0]}), .out_addr({out[1]}), .out_data({out[2]})
  );
"""
        )
    parts.append(
        f"""  assign out_valid = we_out;
  assign out_data = wd_out;
  assign out_last = we_out && (wa_out == {n_out - 1});
endmodule
"""
    )
    return "".join(parts)


def encoder_verilog(net: IntNet) -> str:
    """The whole design: every layer engine, then the top module ``encoder``."""
    words = ram_words(net)
    in_aws = [bits_for(n) for n in words]
    out_aws = in_aws[1:] + [bits_for(int(np.prod(net.layers[-1].out_shape)))]
    head = (
        "// Generated by edgestem (edgestem.firmware.verilog) from the exported QONNX graph: do not edit.\n"
        f"// Input: {net.in_bits}-bit unsigned integers x * 2^{-net.in_exp}; "
        f"output: {net.out_bits}-bit signed integers y, value y * 2^{net.out_exp}.\n"
        "`timescale 1ns / 1ps\n"
    )
    body = "".join(layer_module(la, in_aws[i], out_aws[i]) for i, la in enumerate(net.layers))
    return head + body + top_module(net)


def testbench(net: IntNet) -> str:
    """File-driven testbench: ``+in=FILE`` (one integer per line), ``+out=FILE`` (outputs, cycles)."""
    n_pix = int(np.prod(net.in_shape))
    n_out = int(np.prod(net.layers[-1].out_shape))
    ob = net.out_bits
    return f"""// Generated by edgestem: testbench of {TOP}. +in=FILE: {n_pix} integers per pattern, one per line;
// +out=FILE: one line per pattern: {n_out} signed outputs, then the cycles from the first input to the last output.
`timescale 1ns / 1ps
module {TB}
`ifdef VERILATOR
  (input clk)  // driven by sim_main.cpp: no timing scheduler, ~10x faster
`endif
  ;
`ifndef VERILATOR
  reg clk = 1'b0;
  always #5 clk = ~clk;
`endif
  reg [2:0] rst_count = 3'd0;
  wire rst = (rst_count != 3'd4);
  always @(posedge clk) if (rst) rst_count <= rst_count + 1'b1;
  reg in_valid = 1'b0;
  reg [{net.in_bits - 1}:0] in_data = 0;
  wire in_ready, out_valid, out_last;
  wire signed [{ob - 1}:0] out_data;
  {TOP} dut (
    .clk(clk), .rst(rst), .in_valid(in_valid), .in_data(in_data), .in_ready(in_ready),
    .out_valid(out_valid), .out_data(out_data), .out_last(out_last)
  );
  integer fin, fout, value, got, pix, n_seen, patterns, cycles;
  reg sending, finished;
  reg [8*1024-1:0] in_file, out_file;
  initial begin
    if (!$value$plusargs("in=%s", in_file)) in_file = "patterns.txt";
    if (!$value$plusargs("out=%s", out_file)) out_file = "outputs.txt";
    fin = $fopen(in_file, "r");
    fout = $fopen(out_file, "w");
    if (fin == 0) begin
      $display("tb_encoder: cannot open %0s", in_file);
      $finish;
    end
    pix = 0;
    n_seen = 0;
    patterns = 0;
    cycles = 0;
    sending = 1'b1;
    finished = 1'b0;
  end
  always @(posedge clk) begin
    if (!rst && !finished) begin
      cycles = cycles + 1;
      in_valid <= 1'b0;
      if (sending && in_ready) begin
        got = $fscanf(fin, "%d\\n", value);
        if (got == 1) begin
          if (pix == 0) cycles = 1;
          in_valid <= 1'b1;
          in_data <= value[{net.in_bits - 1}:0];
          pix = pix + 1;
          if (pix == {n_pix}) begin
            pix = 0;
            sending = 1'b0;
          end
        end else if (pix == 0) begin
          finished = 1'b1;
          $fclose(fout);
          $display("tb_encoder: %0d patterns", patterns);
          $finish;
        end else begin
          $display("tb_encoder: %0s ends inside a pattern", in_file);
          $finish;
        end
      end
      if (out_valid) begin
        $fwrite(fout, "%0d ", out_data);
        n_seen = n_seen + 1;
        if (out_last) begin
          $fwrite(fout, "%0d\\n", cycles);
          n_seen = 0;
          patterns = patterns + 1;
          sending = 1'b1;
        end
      end
    end
  end
endmodule
"""


SIM_MAIN = """// Generated by edgestem: Verilator driver of tb_encoder (toggles the clock until $finish).
#include "Vtb_encoder.h"
#include "verilated.h"

int main(int argc, char** argv) {
    VerilatedContext* ctx = new VerilatedContext;
    ctx->commandArgs(argc, argv);
    Vtb_encoder* top = new Vtb_encoder{ctx};
    top->clk = 0;
    while (!ctx->gotFinish()) {
        top->clk = !top->clk;
        top->eval();
    }
    top->final();
    delete top;
    delete ctx;
    return 0;
}
"""


def latency_cycles(net: IntNet) -> dict[str, int]:
    """Cycles per pattern of the design: loading the input, then each layer (one MAC per cycle)."""
    load = int(np.prod(net.in_shape))
    layers = {la.name: la.macs + PIPELINE for la in net.layers}
    return {"load": load, **layers, "total": load + sum(layers.values()) + 1}


__all__ = [
    "SIM_MAIN",
    "TB",
    "TOP",
    "encoder_verilog",
    "latency_cycles",
    "layer_module",
    "ram_words",
    "testbench",
    "top_module",
]
