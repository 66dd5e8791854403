//! The deployment files, checked without a Docker engine.
//!
//! - `compose.yaml` is valid Compose (`docker-compose config`), and every Loopline service in
//!   it, with exactly its command and environment, passes its binary's `--check-config`;
//! - the Dockerfile builds every Loopline binary, and every program compose runs in the image
//!   is one of them;
//! - Mosquitto running `deploy/mosquitto/` (only the listener and three paths changed) enforces
//!   the accounts and the ACL as documented;
//! - the compose stack's services, run as processes with compose's commands and environment
//!   against that broker, land every device's data in the lake within a minute;
//! - the config's TLS listener examples, switched on, carry agents and dispatch, with passwords
//!   and with client certificates.
//!
//! A "container" here is the service's command and environment with the compose network's
//! names rewritten for one machine: `mosquitto:1883` becomes the test broker's address, each
//! volume's mount point a folder of the test, and each listening port a free loopback port.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnectReturnCode, Connection, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::harness::{
    Proc, announce, bin, free_port, http_get, lake_rows, mosquitto_installed, wait_for_port,
};

/// The image every Loopline service of compose.yaml runs.
const IMAGE: &str = "loopline:latest";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Debug, Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
struct Service {
    image: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    depends_on: BTreeMap<String, IgnoredAny>,
    healthcheck: Option<Healthcheck>,
}

#[derive(Debug, Deserialize)]
struct Healthcheck {
    test: Vec<String>,
}

fn compose() -> Compose {
    let path = root().join("compose.yaml");
    let text = std::fs::read_to_string(&path).expect("compose.yaml");
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Compose {
    /// The services that run the Loopline image, dependencies first.
    fn loopline_services(&self) -> Vec<(&str, &Service)> {
        let mut ordered: Vec<(&str, &Service)> = Vec::new();
        let mut placed = BTreeSet::new();
        while placed.len() < self.services.len() {
            let before = placed.len();
            for (name, service) in &self.services {
                if !placed.contains(name.as_str())
                    && service
                        .depends_on
                        .keys()
                        .all(|d| placed.contains(d.as_str()))
                {
                    placed.insert(name.as_str());
                    ordered.push((name, service));
                }
            }
            assert!(
                placed.len() > before,
                "compose.yaml: depends_on has a cycle"
            );
        }
        ordered
            .into_iter()
            .filter(|(_, s)| s.image.as_deref() == Some(IMAGE))
            .collect()
    }
}

/// The workspace package that builds each program the image holds.
fn package_of(program: &str) -> &'static str {
    match program {
        "loopline" => "loopline",
        "loopline-agent" => "loopline-agent",
        "loopline-ingest" => "loopline-ingest",
        "loopline-dispatch" => "loopline-dispatch",
        "loopline-train" => "loopline-trainer",
        other => panic!("compose.yaml runs {other:?}, which no Loopline package builds"),
    }
}

/// One machine's stand-in for the compose network and volumes.
struct Stack {
    dir: PathBuf,
    broker: String,
    /// (service, container port) → loopback port on this machine.
    ports: BTreeMap<(String, u16), u16>,
}

/// A service as a process: program, arguments, environment, health check.
#[derive(Debug)]
struct Container {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    healthcheck: Option<(PathBuf, Vec<String>)>,
}

impl Stack {
    fn new(dir: &Path, broker_port: u16) -> Stack {
        Stack {
            dir: dir.to_owned(),
            broker: format!("127.0.0.1:{broker_port}"),
            ports: BTreeMap::new(),
        }
    }

    fn volume(&self, name: &str) -> PathBuf {
        let path = self.dir.join("volumes").join(name);
        std::fs::create_dir_all(&path).expect("volume folder");
        path
    }

    /// Rewrites one value of a service for this machine.
    fn rewrite(&mut self, service: &str, mounts: &[(String, PathBuf)], value: &str) -> String {
        let mut out = value.replace("mosquitto:1883", &self.broker);
        for (mount, host) in mounts {
            out = out.replace(mount.as_str(), &host.display().to_string());
        }
        for host in ["0.0.0.0:", "127.0.0.1:"] {
            if let Some(rest) = out.strip_prefix(host)
                && let Ok(port) = rest.parse::<u16>()
            {
                let local = *self
                    .ports
                    .entry((service.to_owned(), port))
                    .or_insert_with(free_port);
                out = format!("127.0.0.1:{local}");
                break;
            }
        }
        out
    }

    fn container(&mut self, name: &str, service: &Service) -> Container {
        // Longest mount point first, so that /a/b is not rewritten as /a.
        let mut mounts: Vec<(String, PathBuf)> = service
            .volumes
            .iter()
            .map(|spec| {
                let mut parts = spec.split(':');
                let volume = parts.next().expect("volume name");
                let target = parts.next().expect("mount point");
                (target.to_owned(), self.volume(volume))
            })
            .collect();
        mounts.sort_by_key(|(target, _)| std::cmp::Reverse(target.len()));
        let (program, args) = service
            .command
            .split_first()
            .unwrap_or_else(|| panic!("service {name} has no command"));
        let args = args
            .iter()
            .map(|a| self.rewrite(name, &mounts, a))
            .collect();
        let env = service
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), self.rewrite(name, &mounts, v)))
            .collect();
        let healthcheck = service.healthcheck.as_ref().map(|check| {
            assert_eq!(
                check.test.first().map(String::as_str),
                Some("CMD"),
                "{name}: health checks run a program of the image (CMD), not a shell"
            );
            let program = &check.test[1];
            let args = check.test[2..]
                .iter()
                .map(|a| self.rewrite(name, &mounts, a))
                .collect();
            (bin(package_of(program), program), args)
        });
        Container {
            name: name.to_owned(),
            program: bin(package_of(program), program),
            args,
            env,
            healthcheck,
        }
    }
}

impl Container {
    /// The command with exactly the service's environment (and PATH, for nothing else).
    fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn output(&self, extra: &[&str]) -> Output {
        self.command(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.program.display()))
    }

    /// Runs the service's own health check until it passes.
    fn wait_healthy(&self, proc: &mut Proc, timeout: Duration) {
        let (program, args) = self.healthcheck.as_ref().expect("a health check");
        let deadline = Instant::now() + timeout;
        loop {
            let out = Command::new(program)
                .args(args)
                .output()
                .expect("health check");
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not healthy within {timeout:?}: {}\n{}",
                self.name,
                String::from_utf8_lossy(&out.stderr),
                proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Dispatch's release key, as dispatch writes it at its first start: the agents read it.
fn release_key(stack: &mut Stack, compose: &Compose) {
    let (name, dispatch) = compose
        .loopline_services()
        .into_iter()
        .find(|(_, s)| s.command.first().map(String::as_str) == Some("loopline-dispatch"))
        .expect("a dispatch service");
    let container = Container {
        args: vec!["public-key".to_owned()],
        ..stack.container(name, dispatch)
    };
    let out = container.output(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_file_is_valid_compose() {
    let tool: Option<Vec<&str>> = [vec!["docker-compose"], vec!["docker", "compose"]]
        .into_iter()
        .find(|tool| {
            Command::new(tool[0])
                .args(&tool[1..])
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(tool) = tool else {
        assert!(
            std::env::var("LOOPLINE_REQUIRE_COMPOSE").as_deref() != Ok("1"),
            "LOOPLINE_REQUIRE_COMPOSE=1 but neither docker-compose nor `docker compose` is installed"
        );
        announce("e2e: docker-compose is not installed; compose.yaml not validated by it");
        return;
    };
    let validate = |file: &Path| {
        Command::new(tool[0])
            .args(&tool[1..])
            .arg("--file")
            .arg(file)
            .args(["config", "--quiet"])
            .output()
            .expect("docker-compose config")
    };
    let out = validate(&root().join("compose.yaml"));
    assert!(
        out.status.success(),
        "compose.yaml is not valid:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator does catch a mistake: a port list written as a mapping.
    let dir = tempfile::tempdir().unwrap();
    let broken = std::fs::read_to_string(root().join("compose.yaml"))
        .unwrap()
        .replacen(
            "ports:\n      - \"9464:9464\"",
            "ports:\n      host: 9464",
            1,
        );
    std::fs::create_dir_all(dir.path().join("deploy/mosquitto")).unwrap();
    std::fs::write(dir.path().join("compose.yaml"), broken).unwrap();
    let out = validate(&dir.path().join("compose.yaml"));
    assert!(
        !out.status.success(),
        "a broken compose file passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn every_compose_service_passes_its_binarys_check_config() {
    let compose = compose();
    let services = compose.loopline_services();
    let programs: BTreeSet<&str> = services
        .iter()
        .map(|(_, s)| s.command[0].as_str())
        .collect();
    assert_eq!(
        programs,
        BTreeSet::from(["loopline-agent", "loopline-dispatch", "loopline-ingest"]),
        "compose.yaml runs ingest, dispatch and agents"
    );
    for (_, service) in &services {
        for spec in &service.volumes {
            let volume = spec.split(':').next().unwrap();
            assert!(
                compose.volumes.contains_key(volume),
                "volume {volume} is not declared"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut stack = Stack::new(dir.path(), free_port());
    release_key(&mut stack, &compose);
    let mut checked = Vec::new();
    for (name, service) in &services {
        let container = stack.container(name, service);
        let out = container.output(&["--check-config"]);
        assert!(
            out.status.success(),
            "service {name}: `{} --check-config` with its environment failed:\n{}",
            service.command.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "configuration is valid"
        );
        checked.push(*name);
    }
    assert!(checked.len() >= 5, "{checked:?}");

    // The check can fail: a misspelt variable, a bad value, a missing key file.
    let (name, ingest) = services
        .iter()
        .find(|(_, s)| s.command[0] == "loopline-ingest")
        .unwrap();
    let mut container = stack.container(name, ingest);
    container
        .env
        .push(("LOOPLINE_INGEST_ROLL_AEG".into(), "10s".into()));
    let out = container.output(&["--check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("LOOPLINE_INGEST_ROLL_AEG (did you mean LOOPLINE_INGEST_ROLL_AGE?)"),
        "{stderr}"
    );
    let mut container = stack.container(name, ingest);
    container
        .env
        .push(("LOOPLINE_INGEST_ROLL_AGE".into(), "soon".into()));
    let out = container.output(&["--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));
    let (name, agent) = services
        .iter()
        .find(|(_, s)| s.command[0] == "loopline-agent")
        .unwrap();
    let mut container = stack.container(name, agent);
    for (key, value) in &mut container.env {
        if key == "LOOPLINE_AGENT_MODEL_PUBLIC_KEY_FILE" {
            *value = dir.path().join("no-such.pub").display().to_string();
        }
    }
    let out = container.output(&["--check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("model_public_key_file") && stderr.contains("no-such.pub"),
        "{stderr}"
    );
}

#[test]
fn the_image_holds_every_binary_and_runs_as_a_user() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let built: BTreeSet<&str> = dockerfile
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1])
        .collect();
    let copied: BTreeSet<&str> = dockerfile
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("target/release/"))
        .collect();
    assert_eq!(built, copied, "every binary built is copied into the image");
    // Every binary target of the shipped packages (not the benchmarks').
    let metadata = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(metadata.status.success());
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let mut shipped = BTreeSet::new();
    for package in metadata["packages"].as_array().unwrap() {
        if package["manifest_path"]
            .as_str()
            .unwrap()
            .contains("/bench/")
        {
            continue;
        }
        for target in package["targets"].as_array().unwrap() {
            if target["kind"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == "bin")
            {
                shipped.insert(target["name"].as_str().unwrap().to_owned());
            }
        }
    }
    let built_owned: BTreeSet<String> = built.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        built_owned, shipped,
        "the image holds every Loopline binary"
    );
    // What compose and the image's default command run is in the image.
    let compose = compose();
    for (name, service) in compose.loopline_services() {
        let mut programs = vec![service.command[0].as_str()];
        if let Some(check) = &service.healthcheck {
            programs.push(check.test[1].as_str());
        }
        for program in programs {
            assert!(
                built.contains(program),
                "{name} runs {program}, not in the image"
            );
            let out = Command::new(bin(package_of(program), program))
                .arg("--help")
                .output()
                .unwrap();
            assert!(out.status.success(), "{program} --help");
        }
    }
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert!(built.contains(cmd[0].as_str()), "{cmd:?}");
    let out = Command::new(bin(package_of(&cmd[0]), &cmd[0]))
        .args(&cmd[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "the image's CMD {cmd:?} parses");
    // Multi-stage, and the runtime stage runs as the unprivileged user it creates.
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].ends_with(" AS build"), "{stages:?}");
    let runtime = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    assert!(
        runtime.contains("useradd --system --uid 10001"),
        "{runtime}"
    );
    assert!(runtime.contains("\nUSER loopline:loopline\n"), "{runtime}");
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for needed in ["target/", ".git/", ".venv/"] {
        assert!(
            ignore.lines().any(|l| l == needed),
            ".dockerignore lacks {needed}"
        );
    }
}

/// Mosquitto with the shipped config: the listener on a free loopback port and the config and
/// data folders in `dir`; nothing else changed. With `tls`, the two commented TLS listener
/// examples are switched on as written, on free ports, with a test CA's files in
/// `config/tls/` ([`Pki`]).
struct ShippedMosquitto {
    port: u16,
    /// The server-TLS listener (password logins) and the mutual-TLS one, when switched on.
    tls_ports: Option<(u16, u16)>,
    /// The CA of those listeners, to issue device certificates.
    pki: Option<Pki>,
    _proc: Proc,
}

/// A test CA, Mosquitto's server certificate for 127.0.0.1, and client certificates, as PEM
/// files in one folder: `ca.pem`, `server.pem`/`server.key`, `<name>.pem`/`<name>.key`.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Loopline plant CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        let pki = Pki {
            dir: dir.to_owned(),
            ca: rcgen::Issuer::new(params, key),
        };
        pki.leaf(
            "server",
            "127.0.0.1",
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki
    }

    /// `<name>.pem` and `<name>.key`: a certificate whose common name is `common_name`.
    fn leaf(&self, name: &str, common_name: &str, usage: rcgen::ExtendedKeyUsagePurpose) {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Points a Loopline client at this CA, and with `client` at `<client>.pem`/`.key` as its
    /// certificate.
    fn tls_flags(&self, cmd: &mut Command, client: Option<&str>) {
        cmd.arg("--tls-ca-file").arg(self.path("ca.pem"));
        if let Some(name) = client {
            cmd.arg("--tls-client-cert-file")
                .arg(self.path(&format!("{name}.pem")))
                .arg("--tls-client-key-file")
                .arg(self.path(&format!("{name}.key")));
        }
    }
}

impl ShippedMosquitto {
    fn start(dir: &Path) -> Option<ShippedMosquitto> {
        ShippedMosquitto::start_with(dir, false)
    }

    fn start_with(dir: &Path, tls: bool) -> Option<ShippedMosquitto> {
        if !mosquitto_installed() {
            announce("e2e: the shipped Mosquitto config needs Mosquitto; not installed, not run");
            return None;
        }
        let shipped = root().join("deploy/mosquitto");
        let config = dir.join("mosquitto/config");
        let data = dir.join("mosquitto/data");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        // Mosquitto started as root drops to its own user, which must read and write here.
        let mut d = data.clone();
        loop {
            let mode = if d == data { 0o777 } else { 0o755 };
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            if d == dir {
                break;
            }
            d.pop();
        }
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o755)).unwrap();
        for file in ["passwd", "acl"] {
            std::fs::copy(shipped.join(file), config.join(file)).unwrap();
        }
        let port = free_port();
        let tls_ports = tls.then(|| (free_port(), free_port()));
        let pki = tls.then(|| Pki::new(&config.join("tls")));
        let original = std::fs::read_to_string(shipped.join("mosquitto.conf")).unwrap();
        let mut listeners = 0;
        let mut in_tls_example = false;
        let rendered: String = original
            .lines()
            .map(|line| {
                // A commented `#listener 88xx` starts a TLS example, which ends at a blank line.
                in_tls_example =
                    tls && (line.starts_with("#listener 88") || in_tls_example && !line.is_empty());
                let line = if in_tls_example { &line[1..] } else { line };
                if line == "listener 1883" {
                    listeners += 1;
                    format!("listener {port} 127.0.0.1\n")
                } else if let (Some((server, mutual)), Some(example)) =
                    (tls_ports, line.strip_prefix("listener 88"))
                {
                    listeners += 1;
                    let port = if example == "83" { server } else { mutual };
                    format!("listener {port} 127.0.0.1\n")
                } else {
                    format!(
                        "{}\n",
                        line.replace("/mosquitto/config/", &format!("{}/", config.display()))
                            .replace("/mosquitto/data/", &format!("{}/", data.display()))
                    )
                }
            })
            .collect();
        assert_eq!(
            listeners,
            if tls { 3 } else { 1 },
            "deploy/mosquitto/mosquitto.conf: `listener 1883`, and the TLS examples on 8883 and 8884"
        );
        let conf = dir.join("mosquitto/mosquitto.conf");
        std::fs::write(&conf, rendered).unwrap();
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&conf);
        let proc = Proc::spawn("mosquitto-shipped", cmd, dir);
        for port in std::iter::once(port).chain(tls_ports.iter().flat_map(|(a, b)| [*a, *b])) {
            wait_for_port(port, "mosquitto with the shipped config");
        }
        announce(&format!(
            "e2e: mosquitto with deploy/mosquitto/ on 127.0.0.1:{port}"
        ));
        Some(ShippedMosquitto {
            port,
            tls_ports,
            pki,
            _proc: proc,
        })
    }

    /// Connects as `user` (or anonymously): the client and its connection, or the broker's
    /// refusal.
    fn connect(
        &self,
        client_id: &str,
        user: Option<(&str, &str)>,
    ) -> Result<(Client, Connection), ConnectReturnCode> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_max_packet_size(16 << 20, 16 << 20);
        if let Some((name, password)) = user {
            options.set_credentials(name, password);
        }
        let (client, mut connection) = Client::new(options, 100);
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((client, connection)),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("{client_id}: {e}"),
            }
        }
        panic!("{client_id}: the connection ended before CONNACK")
    }
}

/// Subscribes to each filter in one SUBSCRIBE and waits for the SUBACK.
fn subscribe(client: &Client, connection: &mut Connection, filters: &[&str]) {
    client
        .subscribe_many(
            filters
                .iter()
                .map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce)),
        )
        .unwrap();
    for event in connection.iter() {
        if let Packet::SubAck(ack) = incoming(event) {
            assert!(
                ack.return_codes
                    .iter()
                    .all(|c| !matches!(c, SubscribeReasonCode::Failure)),
                "{ack:?}"
            );
            return;
        }
    }
    unreachable!("the connection ended before SUBACK")
}

fn incoming(event: Result<Event, ConnectionError>) -> Packet {
    match event.expect("connection") {
        Event::Incoming(packet) => packet,
        Event::Outgoing(_) => Packet::PingReq,
    }
}

/// Publishes with QoS 1 and waits for the broker's acknowledgement.
fn publish(
    client: &Client,
    connection: &mut Connection,
    topic: &str,
    payload: &[u8],
    retain: bool,
) {
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .unwrap();
    for event in connection.iter() {
        if let Packet::PubAck(_) = incoming(event) {
            return;
        }
    }
}

/// The next message delivered on this connection: topic and payload.
fn next_message(connection: &mut Connection) -> (String, Vec<u8>) {
    for event in connection.iter() {
        if let Packet::Publish(p) = incoming(event) {
            return (p.topic, p.payload.to_vec());
        }
    }
    unreachable!("the connection ended")
}

const PRESS_1: (&str, &str) = ("site-1.line-1.press-1", "press-1-demo-password");
const PUMP_1: (&str, &str) = ("site-1.line-2.pump-1", "pump-1-demo-password");
const INGEST: (&str, &str) = ("loopline-ingest", "ingest-demo-password");
const DISPATCH: (&str, &str) = ("loopline-dispatch", "dispatch-demo-password");

#[test]
fn the_shipped_mosquitto_config_enforces_accounts_and_the_acl() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = ShippedMosquitto::start(dir.path()) else {
        return;
    };
    // Nobody connects anonymously or with a wrong password.
    assert!(broker.connect("anonymous", None).is_err());
    assert!(broker.connect("guess", Some((PRESS_1.0, "guess"))).is_err());

    // Mosquitto grants every SUBSCRIBE and applies the ACL to each message it would deliver:
    // what a client may not read never reaches it, and what it may not write is dropped. QoS 1
    // keeps one connection's order, so once an allowed message arrived after denied ones, the
    // denied ones were not delivered.
    let (press, mut press_conn) = broker.connect("press-1", Some(PRESS_1)).unwrap();
    subscribe(
        &press,
        &mut press_conn,
        &[
            "loopline/v1/site-1/line-1/model",
            "loopline/v1/site-1/line-1/press-1/model",
            "loopline/v1/site-1/line-2/model",
            "loopline/v1/site-1/line-1/press-2/model",
            "loopline/v1/+/+/+/telemetry",
        ],
    );
    let (ingest, mut ingest_conn) = broker.connect("ingest", Some(INGEST)).unwrap();
    subscribe(
        &ingest,
        &mut ingest_conn,
        &["loopline/v1/+/+/+/telemetry", "loopline/v1/+/+/model"],
    );
    // A device writes only its own topics: not another device's telemetry, not a release.
    for topic in [
        "loopline/v1/site-1/line-1/press-2/telemetry",
        "loopline/v1/site-1/line-2/pump-1/telemetry",
        "loopline/v1/site-1/line-1/model",
    ] {
        publish(&press, &mut press_conn, topic, b"forged", false);
    }
    publish(
        &press,
        &mut press_conn,
        "loopline/v1/site-1/line-1/press-1/telemetry",
        b"own",
        false,
    );
    // Ingest reads telemetry, not model releases; the device does not read telemetry.
    assert_eq!(
        next_message(&mut ingest_conn),
        (
            "loopline/v1/site-1/line-1/press-1/telemetry".to_owned(),
            b"own".to_vec()
        )
    );
    // Dispatch's releases: the device gets its line's and its own, not another line's or
    // another device's.
    let (dispatch, mut dispatch_conn) = broker.connect("dispatch", Some(DISPATCH)).unwrap();
    for (topic, payload) in [
        ("loopline/v1/site-1/line-2/model", b"line-2".as_slice()),
        ("loopline/v1/site-1/line-1/press-2/model", b"press-2"),
        ("loopline/v1/site-1/line-1/model", b"line-1"),
        ("loopline/v1/site-1/line-1/press-1/model", b"press-1"),
    ] {
        publish(&dispatch, &mut dispatch_conn, topic, payload, true);
    }
    let first = next_message(&mut press_conn);
    let second = next_message(&mut press_conn);
    assert_eq!(
        [first, second],
        [
            (
                "loopline/v1/site-1/line-1/model".to_owned(),
                b"line-1".to_vec()
            ),
            (
                "loopline/v1/site-1/line-1/press-1/model".to_owned(),
                b"press-1".to_vec()
            ),
        ]
    );
    // Line 2's device gets line 2's retained release and not line 1's.
    let (pump, mut pump_conn) = broker.connect("pump-1", Some(PUMP_1)).unwrap();
    subscribe(
        &pump,
        &mut pump_conn,
        &[
            "loopline/v1/site-1/line-1/model",
            "loopline/v1/site-1/line-2/model",
        ],
    );
    assert_eq!(
        next_message(&mut pump_conn),
        (
            "loopline/v1/site-1/line-2/model".to_owned(),
            b"line-2".to_vec()
        )
    );
    // The compose health check's account sees the broker's uptime.
    let (health, mut health_conn) = broker
        .connect("health", Some(("healthcheck", "healthcheck")))
        .unwrap();
    subscribe(
        &health,
        &mut health_conn,
        &["loopline/#", "$SYS/broker/uptime"],
    );
    assert_eq!(next_message(&mut health_conn).0, "$SYS/broker/uptime");

    // add-device gives a new device the same rights, under its own password.
    let out = Command::new(root().join("deploy/mosquitto/add-device"))
        .args([
            "--dir",
            dir.path().join("mosquitto/config").to_str().unwrap(),
        ])
        .args(["site-1", "line-3", "mixer-1"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"mixer-secret\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let acl = std::fs::read_to_string(dir.path().join("mosquitto/config/acl")).unwrap();
    assert!(
        acl.ends_with(
            "user site-1.line-3.mixer-1\n\
             topic write loopline/v1/site-1/line-3/mixer-1/telemetry\n\
             topic write loopline/v1/site-1/line-3/mixer-1/status\n\
             topic write loopline/v1/site-1/line-3/mixer-1/model/report\n\
             topic read loopline/v1/site-1/line-3/mixer-1/model\n\
             topic read loopline/v1/site-1/line-3/model\n"
        ),
        "{acl}"
    );
    let bad = Command::new(root().join("deploy/mosquitto/add-device"))
        .args([
            "--dir",
            dir.path().to_str().unwrap(),
            "site-1",
            "line/3",
            "m",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line \"line/3\" is not a valid"));
}

#[test]
fn the_compose_stack_lands_every_devices_data_within_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = ShippedMosquitto::start(dir.path()) else {
        return;
    };
    let compose = compose();
    let mut stack = Stack::new(dir.path(), broker.port);
    let mut procs: Vec<(Container, Proc)> = Vec::new();
    let mut devices = BTreeSet::new();
    let mut started = Instant::now();
    for (name, service) in compose.loopline_services() {
        let container = stack.container(name, service);
        if let Some(device) = service.environment.get("LOOPLINE_AGENT_DEVICES") {
            let line = &service.environment["LOOPLINE_AGENT_LINE"];
            devices.insert((line.clone(), device.clone()));
            if devices.len() == 1 {
                started = Instant::now();
            }
        }
        let mut proc = Proc::spawn(name, container.command(&[]), dir.path());
        // depends_on: service_healthy, as compose waits for it.
        container.wait_healthy(&mut proc, Duration::from_secs(60));
        procs.push((container, proc));
    }
    assert_eq!(devices.len(), 3, "{devices:?}");
    let lake = stack.volume("lake");
    let deadline = started + Duration::from_secs(60);
    let landed = loop {
        let landed: BTreeSet<(String, String)> = lake_rows(&lake)
            .into_iter()
            .map(|r| (r.line, r.device))
            .collect();
        if landed == devices || Instant::now() > deadline {
            break landed;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let logs: String = procs
        .iter()
        .map(|(c, p)| format!("--- {}\n{}", c.name, p.stderr()))
        .collect();
    assert_eq!(
        landed, devices,
        "within a minute of the first agent's start\n{logs}"
    );
    // Nothing was refused on the way: every device's identity matched its account and topic.
    let ingest_port = stack
        .ports
        .iter()
        .find(|((service, _), _)| service == "ingest")
        .map(|(_, port)| *port)
        .expect("ingest's metrics port");
    let (_, metrics) = http_get(ingest_port, "/metrics");
    for reason in ["identity_mismatch", "topic", "undecodable"] {
        let line = format!("loopline_ingest_quarantined_total{{reason=\"{reason}\"}} 0\n");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    // `docker compose stop`: SIGTERM, each drains and exits 0 within its grace period.
    for (container, proc) in procs.iter_mut().rev() {
        proc.terminate();
        let status = proc.wait(Duration::from_secs(45));
        assert!(status.success(), "{} exited with {status}", container.name);
    }
}

#[test]
fn the_shipped_tls_listener_examples_carry_agents_and_dispatch_with_passwords_and_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = ShippedMosquitto::start_with(dir.path(), true) else {
        return;
    };
    let (server_tls, mutual_tls) = broker.tls_ports.unwrap();
    let pki = broker.pki.as_ref().unwrap();
    // On the mutual-TLS listener the certificate's common name is the account.
    pki.leaf(
        "press-2",
        "site-1.line-1.press-2",
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (ingest, mut ingest_conn) = broker.connect("ingest", Some(INGEST)).unwrap();
    subscribe(&ingest, &mut ingest_conn, &["loopline/v1/+/+/+/telemetry"]);
    // Kept polled (keep-alive) while the agents run.
    let (topics_tx, topics_rx) = std::sync::mpsc::channel();
    std::thread::spawn(
        move || {
            while topics_tx.send(next_message(&mut ingest_conn).0).is_ok() {}
        },
    );
    let agent = |device: &str, broker_url: String, client_cert: bool| {
        let mut cmd = Command::new(bin("loopline-agent", "loopline-agent"));
        cmd.args(["--broker", &broker_url])
            .args(["--site", "site-1", "--line", "line-1", "--devices", device])
            .args(["--batches", "2"])
            .arg("--state-dir")
            .arg(dir.path().join(format!("agent-{device}")));
        pki.tls_flags(&mut cmd, client_cert.then_some(device));
        let out = cmd.env_remove("LOOPLINE_BROKER").output().unwrap();
        assert!(
            out.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    agent(
        "press-1",
        format!("mqtts://{}:{}@127.0.0.1:{server_tls}", PRESS_1.0, PRESS_1.1),
        false,
    );
    agent("press-2", format!("mqtts://127.0.0.1:{mutual_tls}"), true);
    // Both devices' batches passed the ACL under their accounts: two each.
    let mut topics: Vec<String> = (0..4)
        .map(|_| topics_rx.recv_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    drop(ingest);
    topics.sort();
    assert_eq!(
        topics,
        [
            "loopline/v1/site-1/line-1/press-1/telemetry",
            "loopline/v1/site-1/line-1/press-1/telemetry",
            "loopline/v1/site-1/line-1/press-2/telemetry",
            "loopline/v1/site-1/line-1/press-2/telemetry",
        ]
    );

    // Dispatch on both listeners, as its account: it connects and receives the two devices'
    // retained model reports, which the ACL lets only service accounts read.
    pki.leaf(
        "dispatch",
        DISPATCH.0,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let dispatch = |name: &str, broker_url: String, client_cert: bool| {
        let listen = free_port();
        let mut cmd = Command::new(bin("loopline-dispatch", "loopline-dispatch"));
        cmd.arg("serve")
            .args(["--broker", &broker_url, "--site", "site-1"])
            .args(["--client-id", name, "--listen"])
            .arg(format!("127.0.0.1:{listen}"))
            .arg("--lake")
            .arg(dir.path().join(format!("{name}-lake")));
        pki.tls_flags(&mut cmd, client_cert.then_some("dispatch"));
        cmd.env_remove("LOOPLINE_BROKER");
        let mut proc = Proc::spawn(name, cmd, dir.path());
        wait_for_port(listen, name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, metrics) = http_get(listen, "/metrics");
            let value = |name: &str| -> f64 {
                metrics
                    .lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                    .unwrap_or(0.0)
            };
            if value("loopline_dispatch_broker_connected") == 1.0
                && value("loopline_dispatch_model_reports_total") >= 2.0
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not connect over TLS and read the two model reports:\n{metrics}\n{}",
                proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        proc.terminate();
        let status = proc.wait(Duration::from_secs(30));
        assert!(status.success(), "{name} exited with {status}");
    };
    dispatch(
        "dispatch-password",
        format!(
            "mqtts://{}:{}@127.0.0.1:{server_tls}",
            DISPATCH.0, DISPATCH.1
        ),
        false,
    );
    dispatch(
        "dispatch-certificate",
        format!("mqtts://127.0.0.1:{mutual_tls}"),
        true,
    );
}
