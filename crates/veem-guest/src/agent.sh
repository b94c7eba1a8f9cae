# The guest's own agent, part of /init (written by the veem-guest crate, which replaces the
# words between at signs): its KPIs, one line every @KPI_INTERVAL_S@ s, to the host through
# the virtio-serial port named @AGENT_PORT_NAME@. POSIX sh with `local`: busybox ash runs
# them in the guest, and the crate's unit tests run them with the build machine's sh.

# agent_port PORTS_DIR: prints the device of the port named @AGENT_PORT_NAME@, from the
# virtio-serial ports of PORTS_DIR (/sys/class/virtio-ports: `vport<d>p<n>/name` each, the
# device `/dev/vport<d>p<n>`; busybox has no udev to make a by-name link); fails when there
# is none.
agent_port() {
	local port name
	for port in "$1"/vport*; do
		[ -f "$port/name" ] || continue
		read -r name < "$port/name" || continue
		if [ "$name" = "@AGENT_PORT_NAME@" ]; then
			echo "/dev/${port##*/}"
			return 0
		fi
	done
	return 1
}

# kpi_line PROC_DIR: prints one report, from PROC_DIR's uptime, meminfo and loadavg (/proc):
# `@KPI_LINE_PREFIX@ uptime_s=<s> mem_total_kb=<kB> mem_free_kb=<kB> load1=<load>`.
kpi_line() {
	local uptime idle load1 rest key value unit total= free=
	read -r uptime idle < "$1/uptime"
	read -r load1 rest < "$1/loadavg"
	while read -r key value unit; do
		case $key in
		MemTotal:) total=$value;;
		MemFree:) free=$value;;
		esac
	done < "$1/meminfo"
	echo "@KPI_LINE_PREFIX@ uptime_s=$uptime mem_total_kb=$total mem_free_kb=$free load1=$load1"
}

# report_kpis PORTS_DIR PROC_DIR: finds the agent's port (the ports appear while insmod
# runs; the wait is for a slow one), then writes a report to it every @KPI_INTERVAL_S@ s,
# forever. Without the port it says so once and ends. A write waits while no host side
# listens: it is given up after a second, so that a report is never older than that when
# the host gets it.
report_kpis() {
	local port tries=0
	until port=$(agent_port "$1"); do
		tries=$((tries + 1))
		if [ $tries -ge 10 ]; then
			echo "veem-guest: no virtio-serial port @AGENT_PORT_NAME@, so no KPIs for the host"
			return 0
		fi
		sleep 0.1
	done
	echo "veem-guest: KPIs every @KPI_INTERVAL_S@ s to $port"
	while :; do
		timeout 1 sh -c 'echo "$1" >> "$2"' kpi "$(kpi_line "$2")" "$port" 2> /dev/null
		sleep @KPI_INTERVAL_S@
	done
}
