# The guest's network functions, part of /init (written by the veem-guest crate, which
# replaces the words between at signs). POSIX sh with `local`: busybox ash runs them in the
# guest, and the crate's unit tests run them with the build machine's sh.
#
# Globals they read: $properties, the context's properties file (`key value` a line); $boot,
# above 0 when the guest's own disk is mounted at @DISK_MOUNT@.

# The properties of an ovf-env.xml, one `key value` a line, whatever the namespace prefix:
# each tag on a line of its own first, as several may share a line or span lines.
read_properties() {
	{ tr '\n\t<' '  \n' < "$1"; echo; } |
		sed -n 's/^[^ ]*Property .*[ :]key="\([^"]*\)".*[ :]value="\([^"]*\)".*/\1 \2/p'
}

# property KEY: prints its value; fails when the context does not set it.
property() {
	local key value
	[ -f "$properties" ] || return 1
	while read -r key value; do
		if [ "$key" = "$1" ]; then
			echo "$value"
			return 0
		fi
	done < "$properties"
	return 1
}

# Milliseconds of the monotonic clock, from the kernel's own line in /proc/timer_list:
# busybox date has no %N, and /proc/uptime counts only hundredths.
now_ms() {
	local now at nanoseconds rest
	while read -r now at nanoseconds rest; do
		if [ "$now $at" = "now at" ]; then
			echo $((nanoseconds / 1000000))
			return 0
		fi
	done < /proc/timer_list
	return 1
}

# interface_with_mac MAC: prints the name of the interface with that address (any case).
interface_with_mac() {
	local mac device address
	mac=$(echo "$1" | tr A-F a-f)
	for device in /sys/class/net/*; do
		read -r address < "$device/address" || continue
		if [ "$address" = "$mac" ]; then
			echo "${device##*/}"
			return 0
		fi
	done
	return 1
}

# configure_nic TARGET MAC: the interface with that MAC gets the target's address, and up.
configure_nic() {
	local target="$1" mac="$2" interface address prefix tries=0
	local ip_key="@NIC_PROPERTY_PREFIX@$target@NIC_IP_SUFFIX@"
	local prefix_key="@NIC_PROPERTY_PREFIX@$target@NIC_PREFIX_SUFFIX@"
	# virtio-net binds its devices while insmod runs; the wait is for a slow one.
	until interface=$(interface_with_mac "$mac"); do
		tries=$((tries + 1))
		if [ $tries -ge 50 ]; then
			echo "veem-guest: cannot configure $target: no interface has MAC $mac"
			return 1
		fi
		sleep 0.02
	done
	if ! address=$(property "$ip_key"); then
		echo "veem-guest: cannot configure $target: its context has no $ip_key"
		return 1
	fi
	prefix=$(property "$prefix_key")
	[ -n "$prefix" ] || prefix=@DEFAULT_NIC_PREFIX@
	if ! ip addr add "$address/$prefix" dev "$interface" || ! ip link set "$interface" up; then
		echo "veem-guest: cannot configure $target: $interface refused $address/$prefix"
		return 1
	fi
	echo "veem-guest: $target $interface $address/$prefix"
}

# configure_nics: every NIC the context names by its MAC.
configure_nics() {
	local nic nics
	nics=$(sed -n 's/^@NIC_PROPERTY_PREFIX_RE@\(.*\)@NIC_MAC_SUFFIX_RE@ \(.*\)$/\1=\2/p' "$properties")
	for nic in $nics; do
		configure_nic "${nic%%=*}" "${nic#*=}"
	done
}

# probe IP:PORT: prints ok when a line sent to that echo service comes back, else fail.
# Attempts go on for @PROBE_BUDGET_MS@ ms, the last starting a second before its end, as
# each may wait that long to connect: the first may wait for ARP, and a peer's echo service
# may be starting.
probe() {
	local address="${1%:*}" port="${1##*:}" deadline reply
	deadline=$(($(now_ms) + @PROBE_BUDGET_MS@ - 1000))
	while :; do
		reply=$(echo veem-probe | timeout 2 nc -w 1 "$address" "$port" 2> /dev/null)
		if [ "$reply" = veem-probe ]; then
			echo ok
			return 0
		fi
		[ "$(now_ms)" -lt $deadline ] || break
		sleep 0.3
	done
	echo fail
	return 1
}

# record FILE LINE: appends the line to a log on the guest's own disk, flushed there.
record() {
	[ "$boot" -gt 0 ] || return 0
	echo "$2" >> "$1"
	# As for the boot log: only an fsync makes QEMU flush its qcow2 overlay.
	sync
	sync "$1"
}

# probe_all TARGETS: each comma-separated IP:PORT probed, its result on the console and in
# the probe log.
probe_all() {
	local target result
	for target in $(echo "$1" | tr , ' '); do
		result=$(probe "$target")
		echo "veem-guest: probe $target $result"
		record "@DISK_MOUNT@/@PROBE_LOG_PATH@" "$target $result"
	done
}

# bench_send IP:PORT:MEGABYTES: prints `send IP:PORT BYTES MILLISECONDS` once the peer has
# taken them all and closed, else `send IP:PORT fail`.
bench_send() {
	local target="${1%:*}" megabytes="${1##*:}" report="${TMPDIR:-/tmp}/bench-dd"
	local started elapsed counts rest full=0
	started=$(now_ms)
	if dd if=/dev/zero bs=1048576 count="$megabytes" 2> "$report" |
		timeout $((30 + megabytes)) nc -w 2 "${target%:*}" "${target##*:}" > /dev/null 2>&1; then
		elapsed=$(($(now_ms) - started))
		# busybox dd says `<full>+<partial> records out`: whole MiB blocks went to nc.
		while read -r counts rest; do
			[ "$rest" = "records out" ] && full="${counts%%+*}"
		done < "$report"
		if [ "$full" = "$megabytes" ]; then
			echo "send $target $((full * 1048576)) $elapsed"
			return 0
		fi
	fi
	echo "send $target fail"
	return 1
}

# bench_ping IP: prints `ping IP min/avg/max MIN/AVG/MAX ms`, else `ping IP fail`.
bench_ping() {
	local times
	times=$(ping -c 20 -i 0.2 -W 2 -q "$1" 2> /dev/null |
		sed -n 's|^round-trip min/avg/max = \([0-9./]*\) ms$|\1|p')
	if [ -n "$times" ]; then
		echo "ping $1 min/avg/max $times ms"
		return 0
	fi
	echo "ping $1 fail"
	return 1
}

# bench SEND PING: the benchmarks the context asks for (either may be empty), each result
# on the console and in the bench log, then the done marker.
bench() {
	local line
	if [ -n "$1" ]; then
		line=$(bench_send "$1")
		echo "veem-guest: bench $line"
		record "@DISK_MOUNT@/@BENCH_LOG_PATH@" "$line"
	fi
	if [ -n "$2" ]; then
		line=$(bench_ping "$2")
		echo "veem-guest: bench $line"
		record "@DISK_MOUNT@/@BENCH_LOG_PATH@" "$line"
	fi
	echo "@BENCH_DONE_MARKER@"
}
