# Out-of-context synthesis or implementation (place and route) of a firmware design, with reports.
#
# Run as `vivado -mode batch -source hw/vivado.tcl`; settings come from environment variables:
#   EDGESTEM_FLOW      hls4ml | finn                                                   required
#   EDGESTEM_PRJ       the project folder: RUN/firmware/hls4ml or RUN/firmware/finn    required
#   EDGESTEM_STEP      synth | impl (impl starts from synth's checkpoint)              required
#   EDGESTEM_PART      part number                                                     required
#   EDGESTEM_CLOCK_NS  clock period in ns                                              required
#   EDGESTEM_OUT       folder for reports and checkpoints                              required
#   EDGESTEM_CLOCK_PORT the design's clock port                          default: ap_clk
#   EDGESTEM_JOBS      parallel jobs for the FINN project's synthesis run default: 2
#
# hls4ml: reads the Verilog that C synthesis wrote (<project>_prj/solution1/syn/verilog, with its
# .dat memory images) in non-project mode, like hls4ml's vivado_synth.tcl, but out of context and
# with the clock constrained. FINN: opens the stitched-IP Vivado project FINN wrote
# (stitched_ip/*.xpr), which FINN made for its own part: a different part is an error.
#
# Writes, for STEP in synth/impl: utilization_STEP.rpt, utilization_STEP_hier.rpt,
# timing_STEP.rpt, post_STEP.dcp (what `edgestem synth-report` reads).

proc setting {name {default ""}} {
    if {[info exists ::env($name)] && $::env($name) ne ""} { return $::env($name) }
    if {$default eq ""} {
        puts "ERROR: \[edgestem\] environment variable $name is not set"
        exit 1
    }
    return $default
}

proc fail {msg} {
    puts "ERROR: \[edgestem\] $msg"
    exit 1
}

proc write_reports {out step} {
    report_utilization -file [file join $out utilization_$step.rpt]
    report_utilization -hierarchical -file [file join $out utilization_${step}_hier.rpt]
    report_timing_summary -file [file join $out timing_$step.rpt]
    write_checkpoint -force [file join $out post_$step.dcp]
}

proc clock_constraint {out port period} {
    set xdc [file join $out clock.xdc]
    set f [open $xdc w]
    puts $f "create_clock -period $period -name $port \[get_ports $port\]"
    close $f
    return $xdc
}

set flow [setting EDGESTEM_FLOW]
set prj [file normalize [setting EDGESTEM_PRJ]]
set step [setting EDGESTEM_STEP]
set part [setting EDGESTEM_PART]
set clock_ns [setting EDGESTEM_CLOCK_NS]
set out [file normalize [setting EDGESTEM_OUT]]
set port [setting EDGESTEM_CLOCK_PORT ap_clk]
set jobs [setting EDGESTEM_JOBS 2]
file mkdir $out
puts "\[edgestem\] $flow $step for $part at $clock_ns ns"

if {$step eq "impl"} {
    set dcp [file join $out post_synth.dcp]
    if {![file exists $dcp]} { fail "no $dcp: run the synth step first" }
    open_checkpoint $dcp
    opt_design
    place_design
    phys_opt_design
    route_design
    write_reports $out impl
    puts "\[edgestem\] impl done"
    exit 0
}
if {$step ne "synth"} { fail "EDGESTEM_STEP must be synth or impl, got '$step'" }

switch $flow {
    hls4ml {
        set tcl [open [file join $prj project.tcl] r]
        set top ""
        regexp {set project_name "?([A-Za-z_][A-Za-z0-9_]*)"?} [read $tcl] -> top
        close $tcl
        if {$top eq ""} { fail "no project_name in [file join $prj project.tcl]" }
        set vdir [file join $prj ${top}_prj solution1 syn verilog]
        set sources [glob -nocomplain -directory $vdir *.v *.sv *.dat]
        if {[llength $sources] == 0} { fail "no Verilog in $vdir: run the csynth step first" }
        if {[llength [glob -nocomplain -directory $vdir *.tcl]] > 0} {
            puts "WARNING: \[edgestem\] $vdir has IP-core scripts (*.tcl); they are not generated here"
        }
        create_project -in_memory -part $part
        add_files $sources
        read_xdc -mode out_of_context [clock_constraint $out $port $clock_ns]
        synth_design -top $top -part $part -mode out_of_context
    }
    finn {
        set xprs [glob -nocomplain -directory [file join $prj stitched_ip] *.xpr]
        if {[llength $xprs] != 1} {
            fail "expected one Vivado project in [file join $prj stitched_ip], found [llength $xprs]: run FINN's stitched-IP step"
        }
        open_project [lindex $xprs 0]
        set built_for [get_property PART [current_project]]
        if {![string equal -nocase $built_for $part]} {
            fail "the FINN project was built for $built_for, not $part: rebuild it with FINN for that part"
        }
        set run [get_runs synth_1]
        set_property -name {STEPS.SYNTH_DESIGN.ARGS.MORE OPTIONS} -value {-mode out_of_context} -objects $run
        reset_run $run
        launch_runs $run -jobs $jobs
        wait_on_run $run
        if {[get_property PROGRESS $run] ne "100%"} { fail "synthesis of the FINN project failed (see its runs/synth_1)" }
        open_run synth_1 -name synth_1
        if {[llength [get_clocks -quiet]] == 0} {
            create_clock -period $clock_ns -name $port [get_ports $port]
        }
    }
    default { fail "EDGESTEM_FLOW must be hls4ml or finn, got '$flow'" }
}
write_reports $out synth
puts "\[edgestem\] synth done"
exit 0
