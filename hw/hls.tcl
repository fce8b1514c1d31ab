# One Vivado HLS / Vitis HLS step of an hls4ml project, for any part and clock.
#
# Settings come from environment variables, so that the same script runs under
# `vivado_hls -f`, `vitis_hls -f` and `vitis-run --mode hls --tcl` (they pass arguments differently):
#   EDGESTEM_PRJ       the hls4ml project folder (project.tcl, firmware/, tb_data/)    required
#   EDGESTEM_STEP      csim | csynth | cosim | export                                   required
#   EDGESTEM_PART      part number                          default: project.tcl's part
#   EDGESTEM_CLOCK_NS  clock period in ns                   default: project.tcl's clock_period
#   EDGESTEM_OUT       folder the reports are copied to     default: <project>/reports
#
# It uses the project settings hls4ml's own build_prj.tcl uses (array partition limit, name length,
# DSP registers, clock uncertainty), so results match `hls_model.build()`; unlike build_prj.tcl it
# takes the part and clock from the board, runs one step per call (make decides what is stale),
# simulates without waveform dumps, and copies the reports where `edgestem synth-report` reads them.

proc setting {name default} {
    if {[info exists ::env($name)] && $::env($name) ne ""} { return $::env($name) }
    return $default
}

proc fail {msg} {
    puts "ERROR: \[edgestem\] $msg"
    exit 1
}

proc copy_if_there {src dst} {
    if {[file exists $src]} {
        file copy -force $src $dst
        return 1
    }
    return 0
}

proc same_file_contents {a b} {
    if {![file exists $a] || ![file exists $b]} { return 0 }
    set fa [open $a r]
    set fb [open $b r]
    set same [string equal [read $fa] [read $fb]]
    close $fa
    close $fb
    return $same
}

set prj [setting EDGESTEM_PRJ ""]
set step [setting EDGESTEM_STEP ""]
if {$prj eq "" || ![file exists [file join $prj project.tcl]]} {
    fail "EDGESTEM_PRJ must name an hls4ml project folder (with project.tcl), got '$prj'"
}
if {[lsearch -exact {csim csynth cosim export} $step] < 0} {
    fail "EDGESTEM_STEP must be csim, csynth, cosim or export, got '$step'"
}
set prj [file normalize $prj]
set out [file normalize [setting EDGESTEM_OUT [file join $prj reports]]]
file mkdir $out
cd $prj

# project_name, backend, part, clock_period, clock_uncertainty, version, maximum_size
source project.tcl
set part [setting EDGESTEM_PART $part]
set clock_period [setting EDGESTEM_CLOCK_NS $clock_period]
set top $project_name
set solution solution1
puts "\[edgestem\] $step of $top for $part at $clock_period ns"

open_project ${top}_prj
set_top $top
add_files firmware/${top}.cpp -cflags "-std=c++0x"
# hls4ml's testbench writes tb_data/rtl_cosim_results.log instead of csim_results.log under RTL_SIM.
set tb_flags "-std=c++0x"
if {$step eq "cosim"} { append tb_flags " -DRTL_SIM" }
add_files -tb ${top}_test.cpp -cflags $tb_flags
add_files -tb firmware/weights
add_files -tb tb_data
# A new C synthesis starts from a clean solution (the part or clock may have changed).
if {$step eq "csynth"} {
    open_solution -reset $solution
} else {
    open_solution $solution
}
catch {config_array_partition -maximum_size $maximum_size}
config_compile -name_max_length 80
set_part $part
config_schedule -enable_dsp_full_reg=false
create_clock -period $clock_period -name default
set_clock_uncertainty $clock_uncertainty default

set report_dir [file join $prj ${top}_prj $solution syn report]
switch $step {
    csim {
        csim_design
        copy_if_there tb_data/csim_results.log [file join $out csim_results.log]
    }
    csynth {
        csynth_design
        if {![copy_if_there [file join $report_dir ${top}_csynth.xml] [file join $out csynth.xml]]} {
            fail "C synthesis wrote no [file join $report_dir ${top}_csynth.xml]"
        }
        copy_if_there [file join $report_dir ${top}_csynth.rpt] [file join $out csynth.rpt]
    }
    cosim {
        cosim_design -trace_level none
        set sim_report [file join $prj ${top}_prj $solution sim report ${top}_cosim.rpt]
        copy_if_there $sim_report [file join $out cosim.rpt]
        set csim_log tb_data/csim_results.log
        set rtl_log tb_data/rtl_cosim_results.log
        set verdict [open [file join $out cosim.txt] w]
        if {![file exists $csim_log]} {
            puts $verdict "UNCHECKED: no $csim_log (run csim first)"
            close $verdict
            fail "no C simulation result ($csim_log) to compare the RTL simulation with: run csim first"
        }
        if {![same_file_contents $csim_log $rtl_log]} {
            puts $verdict "FAIL: $rtl_log differs from $csim_log"
            close $verdict
            fail "C/RTL co-simulation output ($rtl_log) differs from C simulation ($csim_log)"
        }
        puts $verdict "PASS: RTL simulation output equals C simulation output"
        close $verdict
    }
    export {
        export_design -format ip_catalog -version $version
        set ip [open [file join $out ip.txt] w]
        puts $ip [file join $prj ${top}_prj $solution impl ip]
        close $ip
    }
}
puts "\[edgestem\] $step done"
exit 0
