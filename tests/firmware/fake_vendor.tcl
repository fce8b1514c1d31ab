# Stand-ins for the Vivado / Vitis HLS Tcl commands hw/*.tcl use, so that the flow runs under plain
# tclsh in the tests. Every call is appended to $FAKE_LOG; report commands copy fixtures from
# $FAKE_FIXTURES; add_files fails on a file that does not exist (as the real tools do).
# Usage: tclsh fake_vendor.tcl SCRIPT

set fake_log $::env(FAKE_LOG)
set fixtures $::env(FAKE_FIXTURES)

proc log_call {args} {
    set f [open $::fake_log a]
    puts $f [join $args " "]
    close $f
}

proc option {args name} {
    set i [lsearch -exact $args $name]
    if {$i < 0} { return "" }
    return [lindex $args [expr {$i + 1}]]
}

# --- HLS ---
proc open_project {args} { log_call open_project {*}$args; set ::hls_project [lindex $args end] }
proc set_top {args} { log_call set_top {*}$args; set ::hls_top [lindex $args end] }
proc add_files {args} {
    log_call add_files {*}$args
    foreach a $args {
        if {[string index $a 0] eq "-"} { continue }
        foreach f $a {
            if {[file extension $f] in {".cpp" ".v" ".dat" ".h"} || $f in {"firmware/weights" "tb_data"}} {
                if {![file exists $f]} { error "add_files: $f does not exist" }
            }
        }
    }
}
proc open_solution {args} { log_call open_solution {*}$args; set ::hls_solution [lindex $args end] }
proc config_array_partition {args} { log_call config_array_partition {*}$args }
proc config_compile {args} { log_call config_compile {*}$args }
proc config_schedule {args} { log_call config_schedule {*}$args }
proc set_part {args} { log_call set_part {*}$args }
proc create_clock {args} { log_call create_clock {*}$args }
proc set_clock_uncertainty {args} { log_call set_clock_uncertainty {*}$args }
proc csim_design {args} {
    log_call csim_design {*}$args
    set f [open tb_data/csim_results.log w]; puts $f "0.25 -0.5 0.125"; close $f
}
proc csynth_design {args} {
    log_call csynth_design {*}$args
    set dir [file join ${::hls_project} $::hls_solution syn report]
    file mkdir $dir
    file copy -force [file join $::fixtures myproject_csynth.xml] [file join $dir ${::hls_top}_csynth.xml]
    file mkdir [file join ${::hls_project} $::hls_solution syn verilog]
    set f [open [file join ${::hls_project} $::hls_solution syn verilog ${::hls_top}.v] w]
    puts $f "module ${::hls_top}(input ap_clk); endmodule"
    close $f
}
proc cosim_design {args} {
    log_call cosim_design {*}$args
    set f [open tb_data/rtl_cosim_results.log w]
    if {[info exists ::env(FAKE_COSIM_MISMATCH)]} { puts $f "0.25 -0.5 0.0" } else { puts $f "0.25 -0.5 0.125" }
    close $f
}
proc export_design {args} { log_call export_design {*}$args }

# --- Vivado ---
proc create_project {args} { log_call create_project {*}$args }
proc read_xdc {args} { log_call read_xdc {*}$args }
proc synth_design {args} { log_call synth_design {*}$args }
proc open_checkpoint {args} { log_call open_checkpoint {*}$args }
proc opt_design {args} { log_call opt_design {*}$args }
proc place_design {args} { log_call place_design {*}$args }
proc phys_opt_design {args} { log_call phys_opt_design {*}$args }
proc route_design {args} { log_call route_design {*}$args }
proc report_utilization {args} {
    log_call report_utilization {*}$args
    file copy -force [file join $::fixtures utilization_impl.rpt] [option $args -file]
}
proc report_timing_summary {args} {
    log_call report_timing_summary {*}$args
    file copy -force [file join $::fixtures timing_impl.rpt] [option $args -file]
}
proc write_checkpoint {args} {
    log_call write_checkpoint {*}$args
    set f [open [lindex $args end] w]; puts $f "fake checkpoint"; close $f
}

# --- Vivado project mode (FINN's stitched-IP project) ---
proc current_project {args} { return fake_project }
proc get_runs {args} { return [lindex $args end] }
proc get_property {name args} {
    log_call get_property $name {*}$args
    switch $name {
        PART { return $::env(FAKE_PROJECT_PART) }
        PROGRESS { return "100%" }
    }
    return ""
}
proc set_property {args} { log_call set_property {*}$args }
proc reset_run {args} { log_call reset_run {*}$args }
proc launch_runs {args} { log_call launch_runs {*}$args }
proc wait_on_run {args} { log_call wait_on_run {*}$args }
proc open_run {args} { log_call open_run {*}$args }
proc get_clocks {args} { return "" }
proc get_ports {args} { return [lindex $args end] }

source [lindex $argv 0]
