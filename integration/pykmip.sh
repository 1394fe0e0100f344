#!/usr/bin/env bash
# Starts and stops a PyKMIP server (Debian python3-pykmip) on 127.0.0.1 for
# the KMIP integration tests, with certificates made from nothing.
#
#   integration/pykmip.sh start DIR [PORT]   # PORT: $PYKMIP_PORT, else a free one
#   integration/pykmip.sh stop DIR
#
# Without a port it takes a free one (so concurrent runs never collide)
# and records it in DIR/endpoint, where the tests read it.
#
# start creates in DIR (once; later starts reuse them, and the key database):
#   ca.crt                      CA that signs the server and client certs
#   server.crt/.key             IP SAN 127.0.0.1, DNS localhost, EKU serverAuth
#   client.crt/.key             CN cryptds, EKU clientAuth (the key owner)
#   other.crt/.key              CN cryptds-other, same CA (another owner)
#   untrusted.crt/.key          CN cryptds, signed by untrusted-ca.crt, a CA
#                               the server does not trust
# then writes server.conf, starts pykmip-server, waits until it completes a
# mutual-TLS handshake, and records pykmip.pid and endpoint (host:port).
# All keys are ECDSA P-256: with RSA, PyKMIP offers only CBC suites Go
# refuses (Debian's PyKMIP 0.10 with Go's crypto/tls).
#
# stop sends SIGINT (PyKMIP notices SIGTERM only at its next 10 s accept
# timeout) and waits for the exit. On SIGINT PyKMIP stops accepting, then
# joins each connection thread for up to 10 s, so every idle client
# connection adds 10 s; after $PYKMIP_STOP_GRACE seconds (default 5) its
# process group is killed. Nothing is lost: PyKMIP commits each operation
# to its sqlite database as it completes it. No helper process survives.
set -euo pipefail

usage() {
	echo "usage: $0 start DIR [PORT] | stop DIR" >&2
	exit 2
}

die() {
	echo "pykmip.sh: $*" >&2
	exit 1
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
port=${3:-${PYKMIP_PORT:-}}
host=127.0.0.1
start_timeout=${PYKMIP_START_TIMEOUT:-30}
stop_grace=${PYKMIP_STOP_GRACE:-5}

# key FILE: a new P-256 private key, readable by its owner only.
key() {
	(umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null)
}

# serial: a random positive 128-bit serial number.
serial() {
	echo "0x1$(openssl rand -hex 15)"
}

# ca NAME CN: a self-signed CA certificate NAME.crt with key NAME.key.
ca() {
	key "$dir/$1.key"
	openssl req -x509 -new -key "$dir/$1.key" -sha256 -days 3650 -set_serial "$(serial)" \
		-subj "/CN=$2" \
		-addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" \
		-out "$dir/$1.crt" 2>/dev/null
}

# leaf NAME CN CA EXTENSIONS...: NAME.crt/.key signed by CA.crt/.key.
leaf() {
	local name=$1 cn=$2 signer=$3
	shift 3
	key "$dir/$name.key"
	openssl req -new -key "$dir/$name.key" -subj "/CN=$cn" -out "$dir/$name.csr" 2>/dev/null
	printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "$@" >"$dir/$name.ext"
	openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$signer.crt" -CAkey "$dir/$signer.key" \
		-set_serial "$(serial)" -sha256 -days 825 -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
	rm -f "$dir/$name.csr" "$dir/$name.ext"
}

make_certs() {
	[ -s "$dir/ca.crt" ] && [ -s "$dir/untrusted.crt" ] && return 0
	ca ca "cryptds PyKMIP test CA"
	leaf server "$host" ca "subjectAltName=IP:$host,DNS:localhost" "extendedKeyUsage=serverAuth"
	leaf client cryptds ca "extendedKeyUsage=clientAuth"
	leaf other cryptds-other ca "extendedKeyUsage=clientAuth"
	ca untrusted-ca "cryptds untrusted test CA"
	leaf untrusted cryptds untrusted-ca "extendedKeyUsage=clientAuth"
	rm -f "$dir/untrusted-ca.key" # nothing else is ever signed with it
}

write_conf() {
	mkdir -p "$dir/policies"
	cat >"$dir/server.conf" <<EOF
[server]
hostname=$host
port=$port
certificate_path=$dir/server.crt
key_path=$dir/server.key
ca_path=$dir/ca.crt
auth_suite=TLS1.2
enable_tls_client_auth=True
policy_path=$dir/policies
database_path=$dir/pykmip.db
logging_level=INFO
EOF
}

# alive PID: the process exists and is not a zombie (PID 1 in a container
# may never reap an orphan).
alive() {
	[ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# group_alive PGID: a live (non-zombie) process is in the group (read from
# /proc: procps may not be installed).
group_alive() {
	local f line state pgrp
	for f in /proc/[0-9]*/stat; do
		read -r line <"$f" 2>/dev/null || continue
		# After the command name in parentheses: state ppid pgrp ...
		read -r state _ pgrp _ <<<"${line##*) }"
		[ "$pgrp" = "$1" ] && [ "$state" != Z ] && return 0
	done
	return 1
}

# running: the recorded pid is a live pykmip-server.
running() {
	local pid
	[ -s "$dir/pykmip.pid" ] || return 1
	pid=$(cat "$dir/pykmip.pid")
	alive "$pid" && grep -q pykmip "/proc/$pid/cmdline" 2>/dev/null
}

# free_port: a TCP port on host that nothing is bound to now.
free_port() {
	python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$host"
}

# port_open: something accepts TCP connections on host:port.
port_open() {
	(exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# answers: a mutual-TLS handshake with the client certificate succeeds.
answers() {
	timeout 5 openssl s_client -connect "$host:$port" -servername localhost \
		-CAfile "$dir/ca.crt" -cert "$dir/client.crt" -key "$dir/client.key" \
		-verify_return_error -brief </dev/null >/dev/null 2>&1
}

start() {
	command -v pykmip-server >/dev/null || die "pykmip-server not found (apt-get install python3-pykmip)"
	command -v openssl >/dev/null || die "openssl not found"
	mkdir -p "$dir"
	chmod 700 "$dir"
	dir=$(cd "$dir" && pwd)
	if running; then
		die "already running in $dir (pid $(cat "$dir/pykmip.pid")); stop it first"
	fi
	make_certs
	local tries=1
	if [ -z "$port" ]; then
		tries=3 # a free port can be taken between the check and the bind
	fi
	local i
	for i in $(seq "$tries"); do
		if launch; then
			return 0
		fi
		[ "$i" -lt "$tries" ] && echo "pykmip.sh: retrying on another port" >&2
	done
	die "pykmip-server did not start"
}

# launch: start the server on $port (a free one if empty) and wait until it
# answers; on failure return 1 with nothing left running.
launch() {
	local asked=$port
	[ -n "$port" ] || port=$(free_port)
	if port_open; then
		echo "pykmip.sh: port $port on $host is already in use" >&2
		port=$asked
		return 1
	fi
	write_conf
	# umask: the sqlite database holds the keys in the clear. setsid: its own
	# process group (pid = pgid), because PyKMIP forks helper processes
	# (the policy file monitor) that must go when it goes.
	(umask 077 && exec setsid pykmip-server -f "$dir/server.conf" -l "$dir/server.log" </dev/null >"$dir/stdout.log" 2>&1) &
	local pid=$!
	echo "$pid" >"$dir/pykmip.pid"
	local deadline=$((SECONDS + start_timeout))
	until answers; do
		if ! alive "$pid"; then
			rm -f "$dir/pykmip.pid"
			tail -n 20 "$dir/stdout.log" "$dir/server.log" >&2 2>/dev/null || true
			echo "pykmip.sh: pykmip-server exited during startup" >&2
			port=$asked
			return 1
		fi
		if [ $SECONDS -ge $deadline ]; then
			stop
			echo "pykmip.sh: pykmip-server did not answer on $host:$port within ${start_timeout}s" >&2
			port=$asked
			return 1
		fi
		sleep 0.2
	done
	echo "$host:$port" >"$dir/endpoint"
	echo "pykmip-server pid $pid on $host:$port (state in $dir)"
}

stop() {
	[ -s "$dir/pykmip.pid" ] || return 0
	local pid deadline
	pid=$(cat "$dir/pykmip.pid")
	if running; then
		kill -INT "$pid" 2>/dev/null || true
		deadline=$((SECONDS + stop_grace))
		while alive "$pid" && [ $SECONDS -lt $deadline ]; do
			sleep 0.1
		done
		if alive "$pid"; then
			echo "pykmip.sh: pid $pid still joining client sessions after ${stop_grace}s; killing it" >&2
		fi
	fi
	# The whole group, helpers included, even if the server itself died
	# (helpers exit by themselves after a clean stop; give them a moment).
	deadline=$((SECONDS + 2))
	while group_alive "$pid" && [ $SECONDS -lt $deadline ]; do
		alive "$pid" && break
		sleep 0.1
	done
	kill -KILL -- "-$pid" 2>/dev/null || true
	deadline=$((SECONDS + 5))
	while group_alive "$pid"; do
		[ $SECONDS -lt $deadline ] || die "process group $pid survived SIGKILL"
		sleep 0.1
	done
	rm -f "$dir/pykmip.pid"
}

case $cmd in
start) start ;;
stop) stop ;;
*) usage ;;
esac
