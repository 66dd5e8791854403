//! What every end-to-end test needs: a real broker on a free loopback port, the real binaries
//! as child processes that are killed on drop and whose logs are shown when a test fails, and
//! MQTT clients that tap or inject traffic.

use std::fs::File;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// Writes to the real stderr, past the test harness's capture: what a person running the
/// tests should always see (which broker runs).
pub fn announce(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

pub fn free_port() -> u16 {
    loopline_common::embedded_broker::free_port().expect("a free loopback port")
}

/// Path of a workspace binary. `cargo test --workspace` builds all of them before any test
/// runs, and then they are used as they are. A binary that is missing or older than a source
/// file (as after `cargo test --test e2e`, which only builds the root package) is rebuilt
/// first, and the test says so; that build may recompile dependencies for its own feature set.
pub fn bin(package: &str, name: &str) -> PathBuf {
    static CHECKED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = dir.join(name);
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !checked.iter().any(|b| b == name) {
        let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
        let newest_source = [
            "src",
            "proto",
            "common",
            "edge-agent",
            "ingest",
            "dispatch",
            "trainer",
            "model",
            "linesim",
            "npusim",
            "spool",
            "Cargo.lock",
        ]
        .iter()
        .filter_map(|p| newest_mtime(&workspace.join(p)))
        .max();
        if built.is_none() || newest_source > built {
            announce(&format!(
                "e2e: {name} is missing or older than its sources; building it"
            ));
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--quiet", "-p", package, "--bin", name]);
            if dir.file_name().is_some_and(|p| p == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("running cargo build");
            assert!(
                status.success(),
                "cargo build -p {package} --bin {name} failed"
            );
        }
        checked.push(name.to_owned());
    }
    path
}

/// Latest modification time of a file, or of any file under a folder.
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// A child process, killed on drop; its output goes to files whose tails are printed when
/// the test is failing.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, logs: &Path) -> Proc {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout log"))
            .stderr(File::create(&stderr).expect("stderr log"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until `needle` appears in the process's stderr.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before logging {needle:?}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as systemd and Docker do.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            for (what, text) in [("stdout", self.stdout()), ("stderr", self.stderr())] {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                announce(&format!(
                    "----- {} {what} (last {} lines) -----\n{}",
                    self.name,
                    tail.len(),
                    tail.join("\n")
                ));
            }
        }
    }
}

/// A broker for one test: Mosquitto when it is on the PATH, else the embedded broker
/// (`loopline broker`). `LOOPLINE_TEST_BROKER=mosquitto|embedded` forces one; CI forces
/// Mosquitto so that a missing install fails instead of silently falling back.
#[derive(Debug)]
pub struct Broker {
    /// Mosquitto's config file, when it is Mosquitto (for a restart).
    mosquitto_conf: Option<PathBuf>,
    logs: PathBuf,
    /// What agents connect to (MQTT 3.1.1).
    pub url: String,
    /// What ingest connects to (MQTT 5): the same port on Mosquitto, another on rumqttd.
    pub ingest_url: String,
    pub port: u16,
    proc: Proc,
}

impl Broker {
    pub fn start(logs: &Path) -> Broker {
        Broker::launch(logs, false)
    }

    /// Mosquitto with persistence on (its state saved at SIGTERM and loaded at start), so a
    /// restart keeps sessions and queued messages. `None`, said aloud, when only the
    /// embedded broker is available: these tests need the real thing.
    pub fn start_persistent(logs: &Path) -> Option<Broker> {
        let broker = Broker::launch(logs, true);
        if broker.mosquitto_conf.is_none() {
            announce(
                "e2e: this test needs Mosquitto (persistent sessions across restarts); not run with the embedded broker",
            );
            return None;
        }
        Some(broker)
    }

    /// The broker when it is Mosquitto; `None`, said aloud, with the embedded one, which lacks
    /// what the test needs (`what`).
    pub fn mosquitto(self, what: &str) -> Option<Broker> {
        if self.mosquitto_conf.is_none() {
            announce(&format!(
                "e2e: this test needs Mosquitto ({what}); not run with the embedded broker"
            ));
            return None;
        }
        Some(self)
    }

    /// Stops Mosquitto with SIGTERM (it saves its state) and starts it again on the same port.
    pub fn restart(&mut self) {
        let conf = self
            .mosquitto_conf
            .clone()
            .expect("restart needs Mosquitto");
        self.proc.terminate();
        let status = self.proc.wait(Duration::from_secs(20));
        assert!(status.success(), "mosquitto exited with {status}");
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&conf);
        self.proc = Proc::spawn("mosquitto-restarted", cmd, &self.logs);
        wait_for_port(self.port, "mosquitto (restarted)");
    }

    fn launch(logs: &Path, persistent: bool) -> Broker {
        let wanted = std::env::var("LOOPLINE_TEST_BROKER").unwrap_or_default();
        let use_mosquitto = match wanted.as_str() {
            "mosquitto" => mosquitto_installed(),
            "embedded" => false,
            "" => mosquitto_installed(),
            other => panic!("LOOPLINE_TEST_BROKER={other:?}: expected mosquitto or embedded"),
        };
        let port = free_port();
        let mut ingest_port = port;
        let mut mosquitto_conf = None;
        let (kind, proc) = if use_mosquitto {
            let conf = logs.join("mosquitto.conf");
            let persistence = if persistent {
                // Mosquitto started as root drops to its own user, which must write here.
                let dir = logs.join("mosquitto-db");
                std::fs::create_dir_all(&dir).expect("mosquitto persistence folder");
                use std::os::unix::fs::PermissionsExt;
                for d in [logs, dir.as_path()] {
                    let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777));
                }
                format!(
                    "persistence true\npersistence_location {}/\nautosave_interval 3600\n",
                    dir.display()
                )
            } else {
                "persistence false\n".to_owned()
            };
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\n\
                     allow_anonymous true\n\
                     {persistence}\
                     max_queued_messages 1000000\n\
                     log_dest stderr\n\
                     log_type error\n\
                     log_type warning\n"
                ),
            )
            .expect("mosquitto.conf");
            let mut cmd = Command::new("mosquitto");
            cmd.arg("-c").arg(&conf);
            mosquitto_conf = Some(conf);
            ("mosquitto", Proc::spawn("mosquitto", cmd, logs))
        } else {
            ingest_port = free_port();
            let mut cmd = Command::new(bin("loopline", "loopline"));
            cmd.args([
                "broker",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--listen-v5",
                &format!("127.0.0.1:{ingest_port}"),
            ]);
            ("embedded rumqttd", Proc::spawn("broker", cmd, logs))
        };
        wait_for_port(port, kind);
        announce(&format!("e2e broker: {kind} on 127.0.0.1:{port}"));
        Broker {
            mosquitto_conf,
            logs: logs.to_owned(),
            url: format!("mqtt://127.0.0.1:{port}"),
            ingest_url: format!("mqtt://127.0.0.1:{ingest_port}"),
            port,
            proc,
        }
    }

    fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.port);
        options.set_max_packet_size(16 << 20, 16 << 20);
        options.set_keep_alive(Duration::from_secs(10));
        options
    }

    /// Subscribes to `filter` and records every message until dropped. Returns once the
    /// subscription is granted.
    pub fn tap(&self, filter: &str) -> Tap {
        let (client, mut connection) = Client::new(self.options("e2e-tap"), 100);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .expect("tap subscribe");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = messages.clone();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((p.topic, p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("tap subscription granted");
        Tap { client, messages }
    }

    /// Publishes each (topic, payload) with QoS 1 and returns once the broker acknowledged all.
    pub fn publish_all(&self, messages: &[Message]) {
        let (client, mut connection) = Client::new(self.options("e2e-injector"), 1000);
        for (topic, payload) in messages {
            client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
                .expect("publish");
        }
        let mut acked = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        for event in connection.iter() {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = event {
                acked += 1;
                if acked == messages.len() {
                    break;
                }
            }
            assert!(event.is_ok(), "injector connection failed: {event:?}");
            assert!(
                Instant::now() < deadline,
                "only {acked} of {} acked",
                messages.len()
            );
        }
        let _ = client.disconnect();
    }
}

/// Whether `mosquitto` is on the PATH. With `LOOPLINE_TEST_BROKER=mosquitto` it must be: a
/// missing Mosquitto then fails the test instead of letting it fall back or skip.
pub fn mosquitto_installed() -> bool {
    let installed = Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        installed || std::env::var("LOOPLINE_TEST_BROKER").as_deref() != Ok("mosquitto"),
        "LOOPLINE_TEST_BROKER=mosquitto but mosquitto is not on the PATH"
    );
    installed
}

/// `GET path` from a local HTTP endpoint: the status line and the body.
pub fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::Read;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the endpoint");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lake counted by pyarrow, DuckDB and Polars (`tests/interop/count_lake.py`), which
/// must agree: pyarrow's counts. `None`, said aloud, when the readers are not installed.
pub fn python_counts(lake: &Path) -> Option<serde_json::Value> {
    let arg = lake.to_string_lossy().into_owned();
    python_json("count_lake.py", &["--lake", &arg]).map(|counts| counts["pyarrow"].clone())
}

/// Runs `tests/interop/<script>` with the project's Python readers and parses the JSON it
/// prints; the script's exit status must be 0. `None`, said aloud, when the readers are not
/// installed (`bash .ci/setup` installs them); CI sets `LOOPLINE_REQUIRE_PYTHON_READERS=1`,
/// and then that fails instead.
pub fn python_json(script: &str, args: &[&str]) -> Option<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var("LOOPLINE_REQUIRE_PYTHON_READERS").as_deref() != Ok("1"),
            "LOOPLINE_REQUIRE_PYTHON_READERS=1 but {} is missing: run bash .ci/setup",
            python.display()
        );
        announce(&format!(
            "e2e: pyarrow/DuckDB/Polars not installed (bash .ci/setup); {script} not run, the lake is read back in Rust only"
        ));
        return None;
    }
    let output = Command::new(&python)
        .arg(root.join("tests/interop").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed (the readers disagree or could not read the lake): {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{script} JSON: {e}: {stdout}")))
}

/// A message as the broker delivered it: topic and payload.
pub type Message = (String, Vec<u8>);

/// Messages seen by a tap subscriber.
pub struct Tap {
    client: Client,
    messages: Arc<Mutex<Vec<Message>>>,
}

impl Tap {
    pub fn messages(&self) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` messages arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "tap saw {} of {n} messages",
                messages.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("messages", &self.messages().len())
            .finish()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Every Parquet file under `dir`, sorted; fails on a leftover temporary file.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                assert!(
                    name.ends_with(".parquet") && !name.starts_with('.'),
                    "stray file {}",
                    path.display()
                );
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Every telemetry row in the lake.
pub fn lake_rows(lake: &Path) -> Vec<loopline_ingest::telemetry::TelemetryRow> {
    parquet_files(&lake.join("telemetry"))
        .iter()
        .flat_map(|p| loopline_ingest::telemetry::read_file(p).expect("readable telemetry file"))
        .collect()
}
