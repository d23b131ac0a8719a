#!/usr/bin/env bash
# Install the edge agent on one Raspberry Pi over SSH, without Ansible: the same packages, paths,
# config, model check and systemd unit as deploy/roles/edge_agent. Run it from a checkout of the
# project on a machine with python3, ssh and scp; the Pi needs sudo for the SSH user.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/install-pi.sh [options] --room ROOM --broker HOST USER@PI

Installs the edge agent on the Pi USER@PI (Raspberry Pi OS Bookworm) and starts it.

Required:
  --room ROOM              room name shown in reports
  --broker HOST            host name or address of the MQTT broker

Options:
  --device-id ID           device id, MQTT username and topic segment (default: the Pi's host name in USER@PI)
  --password-file FILE     file with the device's MQTT password (default:
                           deploy/inventory/single/credentials/mqtt/ID.password, generated when missing)
  --ca-file FILE           CA of the broker's TLS certificate; switches to TLS on port 8883
  --port PORT              broker port (default: 1883, or 8883 with --ca-file)
  --topic-prefix PREFIX    topic prefix (default: classroom)
  --source-kind KIND       picamera2, camera, video or images (default: picamera2)
  --source-uri URI         camera index, stream URL or path (default: 0)
  --model-card FILE        card (.json) of the emotion model; the model is its file_name beside it
                           (default: the bundled model)
  --wheel FILE             project wheel to install (default: build one from this checkout)
  --ssh-option OPTION      passed to ssh and scp as -o OPTION; may be repeated
  --stage DIR              write the files that would be copied into DIR and stop, without SSH
  -h, --help               show this help

Exit status: 0 installed, 1 a step failed, 2 invalid options.
EOF
}

fail_usage() {
  echo "install-pi.sh: $1" >&2
  echo "Run deploy/install-pi.sh --help for the options." >&2
  exit 2
}

repo_dir=$(cd "$(dirname "$0")/.." && pwd)
room=""
broker=""
device_id=""
password_file=""
ca_file=""
port=""
topic_prefix="classroom"
source_kind="picamera2"
source_uri="0"
model_card="$repo_dir/edge_agent/models/emotion_mini_xception_int8.json"
wheel=""
stage_dir=""
ssh_options=()
target=""

while [ $# -gt 0 ]; do
  case "$1" in
    --room) room=${2-}; shift 2 ;;
    --broker) broker=${2-}; shift 2 ;;
    --device-id) device_id=${2-}; shift 2 ;;
    --password-file) password_file=${2-}; shift 2 ;;
    --ca-file) ca_file=${2-}; shift 2 ;;
    --port) port=${2-}; shift 2 ;;
    --topic-prefix) topic_prefix=${2-}; shift 2 ;;
    --source-kind) source_kind=${2-}; shift 2 ;;
    --source-uri) source_uri=${2-}; shift 2 ;;
    --model-card) model_card=${2-}; shift 2 ;;
    --wheel) wheel=${2-}; shift 2 ;;
    --ssh-option) ssh_options+=(-o "${2-}"); shift 2 ;;
    --stage) stage_dir=${2-}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) fail_usage "unknown option $1" ;;
    *)
      [ -z "$target" ] || fail_usage "more than one target: $target and $1"
      target=$1; shift ;;
  esac
done

[ -n "$room" ] || fail_usage "--room is missing"
[ -n "$broker" ] || fail_usage "--broker is missing"
[ -n "$target" ] || [ -n "$stage_dir" ] || fail_usage "the target USER@PI is missing"
if [ -z "$device_id" ]; then
  device_id=${target#*@}
  device_id=${device_id%%.*}
fi
[[ "$device_id" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] \
  || fail_usage "device id '$device_id' is invalid: use 1-64 letters, digits, '_', '.' or '-' (set --device-id)"
case "$source_kind" in
  picamera2|camera|video|images) ;;
  *) fail_usage "--source-kind '$source_kind' is invalid: use picamera2, camera, video or images" ;;
esac
[ -z "$port" ] || [[ "$port" =~ ^[0-9]+$ ]] || fail_usage "--port '$port' is not a number"
if [ -z "$port" ]; then
  if [ -n "$ca_file" ]; then port=8883; else port=1883; fi
fi
[ -f "$model_card" ] || fail_usage "model card $model_card not found: pass --model-card FILE"
[ -z "$password_file" ] || [ -f "$password_file" ] || fail_usage "password file $password_file not found"
[ -z "$ca_file" ] || [ -f "$ca_file" ] || fail_usage "CA file $ca_file not found"
[ -z "$wheel" ] || [ -f "$wheel" ] || fail_usage "wheel $wheel not found"

# Paths on the Pi; deploy/roles/edge_agent and systemd/edge-agent.service use the same ones.
install_dir=/opt/classroom-emotion-stats
config_dir=/etc/edge-agent
unit_file=/etc/systemd/system/edge-agent.service

work_dir=$(mktemp -d)
trap 'rm -rf "$work_dir"' EXIT
files_dir=${stage_dir:-$work_dir/files}
mkdir -p "$files_dir"

# The model must match its card byte for byte before it leaves this machine.
read -r model_name model_sha256 < <(python3 -c '
import json, sys
card = json.load(open(sys.argv[1], encoding="utf-8"))
print(card["file_name"], card["sha256"])
' "$model_card")
model_file="$(dirname "$model_card")/$model_name"
[ -f "$model_file" ] || { echo "install-pi.sh: model $model_file, named by $model_card, not found" >&2; exit 1; }
actual_sha256=$(sha256sum "$model_file" | cut -d' ' -f1)
if [ "$actual_sha256" != "$model_sha256" ]; then
  echo "install-pi.sh: $model_file has sha256 $actual_sha256, but $model_card expects $model_sha256:" \
    "export the model and its card together" >&2
  exit 1
fi
model_dir="$install_dir/models/${model_sha256:0:16}"
cp "$model_file" "$files_dir/$model_name"
cp "$model_card" "$files_dir/${model_name%.*}.json"

if [ -z "$wheel" ]; then
  echo "Building the project wheel from $repo_dir"
  python3 -m pip wheel --quiet --no-deps --wheel-dir "$work_dir/dist" "$repo_dir"
  wheel=$(ls "$work_dir"/dist/classroom_emotion_stats-*.whl)
fi
cp "$wheel" "$files_dir/"
wheel_name=$(basename "$wheel")

if [ -z "$password_file" ]; then
  # Kept on this machine, so that a second run gives the Pi the same password (the folder is in
  # deploy/.gitignore).
  password_file="$repo_dir/deploy/inventory/single/credentials/mqtt/$device_id.password"
  if [ ! -f "$password_file" ]; then
    (umask 077 && mkdir -p "$(dirname "$password_file")" \
      && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$password_file")
    echo "Generated the MQTT password of $device_id in $password_file"
  fi
fi
(umask 077 && head -n 1 "$password_file" > "$files_dir/mqtt-password")

ca_line=""
if [ -n "$ca_file" ]; then
  cp "$ca_file" "$files_dir/mqtt-ca.pem"
  ca_line="ca_file = \"$config_dir/mqtt-ca.pem\""
fi

toml_string() {
  python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"
}

cat > "$files_dir/agent.toml" <<EOF
# Edge agent config of $device_id, written by deploy/install-pi.sh; every key is described in
# edge_agent/config.py.
device_id = $(toml_string "$device_id")
room = $(toml_string "$room")

[source]
kind = $(toml_string "$source_kind")
uri = $(toml_string "$source_uri")

[classifier]
model = $(toml_string "$model_dir/$model_name")

[mqtt]
host = $(toml_string "$broker")
port = $port
topic_prefix = $(toml_string "$topic_prefix")
username = $(toml_string "$device_id")
password_file = "$config_dir/mqtt-password"
$ca_line
EOF
cp "$repo_dir/systemd/edge-agent.service" "$files_dir/edge-agent.service"

if [ -n "$stage_dir" ]; then
  echo "Wrote the files for $device_id to $stage_dir; nothing was copied."
  exit 0
fi

# Runs on the Pi as root, in the folder the files were copied to.
cat > "$files_dir/install.sh" <<EOF
set -euo pipefail
cd "\$(dirname "\$0")"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q python3-venv python3-picamera2
id -u edge-agent >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin edge-agent
usermod -a -G video edge-agent

install -d -m 0755 $install_dir $install_dir/dist $model_dir
install -d -m 0750 -g edge-agent $config_dir
install -m 0644 $wheel_name $install_dir/dist/
[ -x $install_dir/.venv/bin/python ] || python3 -m venv --system-site-packages $install_dir/.venv
$install_dir/.venv/bin/python -m pip install --quiet "$install_dir/dist/$wheel_name[edge]"

install -m 0644 $model_name ${model_name%.*}.json $model_dir/
echo "$model_sha256  $model_dir/$model_name" | sha256sum --check --quiet
install -m 0640 -g edge-agent mqtt-password $config_dir/mqtt-password
[ ! -f mqtt-ca.pem ] || install -m 0644 mqtt-ca.pem $config_dir/mqtt-ca.pem
$install_dir/.venv/bin/edge-agent check-config agent.toml
install -m 0640 -g edge-agent agent.toml $config_dir/agent.toml
install -m 0644 edge-agent.service $unit_file

systemctl daemon-reload
systemctl enable edge-agent.service
systemctl restart edge-agent.service
systemctl --no-pager --lines=5 status edge-agent.service || true
EOF

echo "Copying the files to $target"
remote_dir=$(ssh "${ssh_options[@]}" "$target" mktemp -d)
scp -q "${ssh_options[@]}" "$files_dir"/* "$target:$remote_dir/"
echo "Installing on $target"
# -t gives sudo a terminal for its password prompt.
ssh -t "${ssh_options[@]}" "$target" sudo bash "$remote_dir/install.sh"
ssh "${ssh_options[@]}" "$target" rm -rf "$remote_dir"

echo "Installed the edge agent as $device_id in room '$room', publishing to $broker:$port."
echo "The broker needs its account, unless deploy/site.yml manages the broker:"
echo "  sudo mosquitto_passwd /etc/mosquitto/classroom/passwd $device_id   (enter the password from $password_file)"
echo "and its topics in /etc/mosquitto/classroom/acl, then sudo systemctl reload mosquitto:"
echo "  user $device_id"
echo "  topic readwrite $topic_prefix/$device_id/#"
