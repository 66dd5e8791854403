//! `deploy/pi/install.sh` from the outside, installing this build's `loopline-agent`.
//!
//! The `--root` tests install into a temporary system root (minimal `etc/passwd`, `group`,
//! `shadow`, `gshadow`): the user is created there with `useradd --root`, files are owned by
//! its ids there and the unit is enabled with `systemctl --root`. That needs root privileges;
//! without them those tests say so on stderr and check only what needs none, and
//! `LOOPLINE_REQUIRE_ROOT_TESTS=1` makes the missing privileges a failure instead. Nothing
//! here touches the running system's /etc, /usr or systemd: every run of the script gets
//! `--root` or `--destdir` with a temporary folder.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use loopline_agent::AgentConfig;
use loopline_npusim::Profile;

const BIN: &str = env!("CARGO_BIN_EXE_loopline-agent");
const USER: &str = "loopline-agent";
const BIN_PATH: &str = "usr/local/bin/loopline-agent";
const PREVIOUS_PATH: &str = "usr/local/bin/loopline-agent.previous";
const UNIT_PATH: &str = "etc/systemd/system/loopline-agent.service";
const WANTS_PATH: &str = "etc/systemd/system/multi-user.target.wants/loopline-agent.service";
const TOML_PATH: &str = "etc/loopline/agent.toml";
const ENV_PATH: &str = "etc/loopline/agent.env";
const PASSWORD: &str = "p@ss:w0rd%";
const PASSWORD_ENCODED: &str = "p%40ss%3Aw0rd%25";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/pi")
}

/// What one run of the script did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "install.sh failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    fn says(&self, text: &str) -> bool {
        self.stdout.contains(text)
    }
}

/// Runs `deploy/pi/install.sh` with `args`, in an environment without DESTDIR or LOOPLINE_*.
fn install(args: &[&str]) -> Run {
    let mut command = Command::new("bash");
    command.arg(deploy_dir().join("install.sh")).args(args);
    command.env_remove("DESTDIR");
    for (key, _) in std::env::vars() {
        if key.starts_with("LOOPLINE_") {
            command.env_remove(key);
        }
    }
    let output = command.output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8(output.stdout).unwrap().trim() == "0"
}

/// Whether the `--root` part of `test` can run; says so on stderr when it cannot.
fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("LOOPLINE_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
        "{test}: needs root privileges (useradd --root, chown) and LOOPLINE_REQUIRE_ROOT_TESTS=1 is set"
    );
    // Straight to stderr, past the test harness's capture: a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: SKIPPED its --root checks: they need root privileges (useradd --root, chown); \
         run the tests as root, and set LOOPLINE_REQUIRE_ROOT_TESTS=1 to make this a failure"
    );
    false
}

/// A temporary system root holding just what `useradd --root` needs.
fn temp_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    fs::create_dir(&etc).unwrap();
    for (name, text, mode) in [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("group", "root:x:0:\n", 0o644),
        ("shadow", "root:*:19000:0:99999:7:::\n", 0o600),
        ("gshadow", "root:*::\n", 0o600),
    ] {
        let path = etc.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    dir
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The `name` entry of a passwd or group file, split at ':'.
fn entry(file: &Path, name: &str) -> Option<Vec<String>> {
    fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|line| line.split(':').map(str::to_owned).collect::<Vec<_>>())
        .find(|fields| fields[0] == name)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The effective configuration of the installed agent: `--print-config` run by the installed
/// binary on the installed agent.toml, with agent.env's variables as systemd would pass them.
fn installed_config(top: &Path) -> AgentConfig {
    let mut command = Command::new(top.join(BIN_PATH));
    command.env_clear().arg("--config").arg(top.join(TOML_PATH));
    for line in fs::read_to_string(top.join(ENV_PATH)).unwrap().lines() {
        if let Some((key, value)) = line.split_once('=')
            && !key.starts_with('#')
        {
            command.env(key, value);
        }
    }
    super::print_config(&mut command)
}

/// A CA certificate (PEM) for `--tls-ca-file`.
fn ca_pem(dir: &Path) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join("ca.pem");
    fs::write(&path, cert.pem()).unwrap();
    path
}

fn public_key_hex() -> String {
    let key = loopline_model::release::signing_key_from_hex(&"42".repeat(32)).unwrap();
    hex::encode(key.verifying_key().as_bytes())
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let bytes = fs::read(&path).unwrap();
                if bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
                {
                    found.push(path);
                }
            }
        }
    }
    found
}

#[test]
fn root_install_writes_the_config_from_flags_and_enables_the_unit() {
    if !root_or_skip("root_install_writes_the_config_from_flags_and_enables_the_unit") {
        return;
    }
    let root = temp_root();
    let inputs = tempfile::tempdir().unwrap();
    let ca = ca_pem(inputs.path());
    let password_file = inputs.path().join("password");
    fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let key = public_key_hex();
    let r = root.path();
    let run = install(&[
        "--root",
        path_str(r),
        "--binary",
        BIN,
        "--broker",
        "mqtts://broker.plant-1.example:8883",
        "--site",
        "plant-1",
        "--line",
        "press-line",
        "--device",
        "press-1",
        "--device",
        "press-2,press-3",
        "--npu-profile",
        "Hailo-8",
        "--model-public-key",
        &key,
        "--tls-ca-file",
        path_str(&ca),
        "--username",
        "press-1",
        "--password-file",
        path_str(&password_file),
    ])
    .ok();
    assert!(
        run.says("passes loopline-agent --check-config"),
        "{}",
        run.stdout
    );

    // The user, in the temporary root only.
    let user = entry(&r.join("etc/passwd"), USER).expect("no loopline-agent in etc/passwd");
    assert!(user[6].ends_with("/nologin"), "{user:?}");
    assert_eq!(user[5], "/var/lib/loopline-agent");
    let group = entry(&r.join("etc/group"), USER).expect("no loopline-agent in etc/group");
    assert_eq!(user[3], group[2], "the user's primary group is its own");
    let gid: u32 = group[2].parse().unwrap();
    let uid: u32 = user[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "not a system uid: {uid}");
    assert!(entry(&r.join("etc/shadow"), USER).is_some());

    // Files, modes and owners.
    assert_eq!(fs::read(r.join(BIN_PATH)).unwrap(), fs::read(BIN).unwrap());
    assert_eq!(mode(&r.join(BIN_PATH)), 0o755);
    assert_eq!(mode(&r.join(UNIT_PATH)), 0o644);
    assert_eq!(mode(&r.join("etc/loopline")), 0o750);
    for path in [
        "etc/loopline",
        "etc/loopline/tls",
        TOML_PATH,
        ENV_PATH,
        "etc/loopline/tls/ca.pem",
    ] {
        let meta = fs::metadata(r.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, gid), "owner of {path}");
        if meta.is_file() {
            assert_eq!(mode(&r.join(path)), 0o640, "mode of {path}");
        }
    }
    assert_eq!(
        fs::read(r.join("etc/loopline/tls/ca.pem")).unwrap(),
        fs::read(&ca).unwrap()
    );
    assert_eq!(
        fs::read_link(r.join(WANTS_PATH)).unwrap(),
        Path::new("/etc/systemd/system/loopline-agent.service")
    );
    // The state directory is systemd's to create, at the first start.
    assert!(!r.join("var/lib/loopline-agent").exists());

    // The configuration, as the installed agent reads it.
    let config = installed_config(r);
    assert_eq!(config.site, "plant-1");
    assert_eq!(config.line, "press-line");
    assert_eq!(config.devices, ["press-1", "press-2", "press-3"]);
    assert_eq!(config.npu_profile, Profile::Hailo8);
    assert_eq!(config.model_public_key.as_deref(), Some(key.as_str()));
    assert_eq!(
        config.tls_ca_file.as_deref(),
        Some(Path::new("/etc/loopline/tls/ca.pem"))
    );
    assert_eq!(config.broker.host, "broker.plant-1.example");
    assert_eq!(config.broker.port, 8883);
    let credentials = config
        .broker
        .credentials
        .expect("no credentials from agent.env");
    assert_eq!(credentials.username, "press-1");
    assert_eq!(credentials.password, PASSWORD);

    // The password is in agent.env, and nowhere else: not in agent.toml, not in the output.
    let toml = AgentConfig::load(&r.join(TOML_PATH)).unwrap();
    assert!(toml.broker.credentials.is_none(), "{:?}", toml.broker);
    let env_file = [r.join(ENV_PATH)];
    for (needle, holders) in [
        (PASSWORD, &[][..]),
        ("p@ss", &[][..]),
        (PASSWORD_ENCODED, &env_file[..]),
        ("p%40ss", &env_file[..]),
    ] {
        assert_eq!(
            files_containing(r, needle),
            holders,
            "files holding {needle:?}"
        );
        assert!(!run.stdout.contains(needle) && !run.stderr.contains(needle));
    }
}

#[test]
fn root_rerun_upgrade_and_rollback_keep_the_operators_config() {
    if !root_or_skip("root_rerun_upgrade_and_rollback_keep_the_operators_config") {
        return;
    }
    let root = temp_root();
    let r = root.path();
    let flags = [
        "--root",
        path_str(r),
        "--binary",
        BIN,
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--site",
        "s1",
        "--line",
        "l1",
        "--device",
        "d1",
        "--npu-profile",
        "rk3588",
    ];
    install(&flags).ok();
    let first_toml = fs::read_to_string(r.join(TOML_PATH)).unwrap();

    // Again with the same flags: nothing changes, and the output says so.
    let again = install(&flags).ok();
    for path in [
        "/usr/local/bin/loopline-agent",
        "/etc/systemd/system/loopline-agent.service",
        "/etc/loopline/agent.toml",
    ] {
        assert!(
            again.says(&format!("unchanged: {path}")),
            "{}",
            again.stdout
        );
    }
    assert!(again.says("kept existing: /etc/loopline/agent.env"));
    assert!(!again.says("installed:"), "{}", again.stdout);
    assert!(again.says("user loopline-agent exists"));
    let passwd = fs::read_to_string(r.join("etc/passwd")).unwrap();
    let users = passwd
        .lines()
        .filter(|line| line.starts_with("loopline-agent:"));
    assert_eq!(users.count(), 1, "{passwd}");
    assert_eq!(fs::read_to_string(r.join(TOML_PATH)).unwrap(), first_toml);
    assert!(!r.join(PREVIOUS_PATH).exists());

    // The operator's edit survives a rerun with the flags.
    let edited = format!("{first_toml}spool_max_bytes = \"128 MiB\"\n");
    fs::write(r.join(TOML_PATH), &edited).unwrap();
    let rerun = install(&flags).ok();
    assert!(
        rerun.says("kept existing: /etc/loopline/agent.toml"),
        "{}",
        rerun.stdout
    );
    assert!(rerun.says("--force-config"));
    assert_eq!(fs::read_to_string(r.join(TOML_PATH)).unwrap(), edited);
    assert_eq!(installed_config(r).spool_max_bytes.as_u64(), 128 << 20);

    // The spool, as a running agent would have left it.
    let spooled = r.join("var/lib/loopline-agent/spool/s1/l1/d1/00000000.seg");
    fs::create_dir_all(spooled.parent().unwrap()).unwrap();
    fs::write(&spooled, b"batches").unwrap();

    // An upgrade to another binary (the same program with bytes appended).
    let inputs = tempfile::tempdir().unwrap();
    let new_bin = inputs.path().join("loopline-agent");
    let mut bytes = fs::read(BIN).unwrap();
    bytes.extend_from_slice(b"next version");
    fs::write(&new_bin, &bytes).unwrap();
    fs::set_permissions(&new_bin, fs::Permissions::from_mode(0o755)).unwrap();
    let upgrade = install(&[
        "--upgrade",
        "--root",
        path_str(r),
        "--binary",
        path_str(&new_bin),
    ])
    .ok();
    assert!(upgrade.says("not restarted (--root)"), "{}", upgrade.stdout);
    assert_eq!(fs::read(r.join(BIN_PATH)).unwrap(), bytes);
    assert_eq!(mode(&r.join(BIN_PATH)), 0o755);
    assert_eq!(
        fs::read(r.join(PREVIOUS_PATH)).unwrap(),
        fs::read(BIN).unwrap()
    );
    assert_eq!(fs::read_to_string(r.join(TOML_PATH)).unwrap(), edited);
    assert_eq!(fs::read(&spooled).unwrap(), b"batches");
    assert!(r.join(WANTS_PATH).symlink_metadata().is_ok());
    // The upgraded binary reads the kept configuration.
    assert_eq!(installed_config(r).npu_profile, Profile::Rk3588);

    let same = install(&[
        "--upgrade",
        "--root",
        path_str(r),
        "--binary",
        path_str(&new_bin),
    ])
    .ok();
    assert!(same.says("unchanged: /usr/local/bin/loopline-agent"));
    assert_eq!(
        fs::read(r.join(PREVIOUS_PATH)).unwrap(),
        fs::read(BIN).unwrap()
    );

    // Rollback puts the previous binary back; the one it replaced becomes .previous.
    install(&["--rollback", "--root", path_str(r)]).ok();
    assert_eq!(fs::read(r.join(BIN_PATH)).unwrap(), fs::read(BIN).unwrap());
    assert_eq!(fs::read(r.join(PREVIOUS_PATH)).unwrap(), bytes);
    assert_eq!(fs::read_to_string(r.join(TOML_PATH)).unwrap(), edited);
    assert_eq!(fs::read(&spooled).unwrap(), b"batches");

    // --force-config replaces the edited file and keeps it as agent.toml.old.
    let mut forced = flags.to_vec();
    forced.push("--force-config");
    let force = install(&forced).ok();
    assert!(
        force.says("replaced: /etc/loopline/agent.toml"),
        "{}",
        force.stdout
    );
    assert_eq!(fs::read_to_string(r.join(TOML_PATH)).unwrap(), first_toml);
    assert_eq!(
        fs::read_to_string(r.join("etc/loopline/agent.toml.old")).unwrap(),
        edited
    );
}

#[test]
fn root_uninstall_keeps_the_config_and_purge_removes_everything() {
    if !root_or_skip("root_uninstall_keeps_the_config_and_purge_removes_everything") {
        return;
    }
    let root = temp_root();
    let r = root.path();
    let rs = path_str(r);
    // No config flags: the shipped example configuration.
    let first = install(&["--root", rs, "--binary", BIN]).ok();
    assert!(first.says("installed example: /etc/loopline/agent.toml (edit it)"));
    assert_eq!(
        fs::read(r.join(TOML_PATH)).unwrap(),
        fs::read(deploy_dir().join("agent.toml")).unwrap()
    );
    assert_eq!(
        fs::read(r.join(ENV_PATH)).unwrap(),
        fs::read(deploy_dir().join("agent.env")).unwrap()
    );
    let gid: u32 = entry(&r.join("etc/group"), USER).unwrap()[2]
        .parse()
        .unwrap();
    assert_eq!(fs::metadata(r.join(TOML_PATH)).unwrap().gid(), gid);
    // A .previous binary and a spool to remove or keep.
    let inputs = tempfile::tempdir().unwrap();
    let new_bin = inputs.path().join("loopline-agent");
    let mut bytes = fs::read(BIN).unwrap();
    bytes.extend_from_slice(b"next version");
    fs::write(&new_bin, &bytes).unwrap();
    install(&["--upgrade", "--root", rs, "--binary", path_str(&new_bin)]).ok();
    let spooled = r.join("var/lib/loopline-agent/spool/x.seg");
    fs::create_dir_all(spooled.parent().unwrap()).unwrap();
    fs::write(&spooled, b"batches").unwrap();

    let uninstall = install(&["--uninstall", "--root", rs]).ok();
    assert!(uninstall.says("kept /etc/loopline"), "{}", uninstall.stdout);
    for gone in [BIN_PATH, PREVIOUS_PATH, UNIT_PATH, WANTS_PATH] {
        assert!(
            r.join(gone).symlink_metadata().is_err(),
            "{gone} is still there"
        );
    }
    for kept in [TOML_PATH, ENV_PATH] {
        assert!(r.join(kept).is_file(), "{kept} was removed");
    }
    assert_eq!(fs::read(&spooled).unwrap(), b"batches");
    assert!(entry(&r.join("etc/passwd"), USER).is_some());

    // Nothing installed: an upgrade and a rollback refuse.
    let refused = install(&["--upgrade", "--root", rs, "--binary", BIN]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("nothing is installed"),
        "{}",
        refused.stderr
    );
    assert_eq!(install(&["--rollback", "--root", rs]).code, 1);

    install(&["--uninstall", "--purge", "--root", rs]).ok();
    assert!(!r.join("etc/loopline").exists());
    assert!(!r.join("var/lib/loopline-agent").exists());
    for file in ["passwd", "group", "shadow", "gshadow"] {
        assert!(
            entry(&r.join("etc").join(file), USER).is_none(),
            "{USER} is still in etc/{file}"
        );
        assert!(
            entry(&r.join("etc").join(file), "root").is_some(),
            "root is gone from etc/{file}"
        );
    }
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let dest = tempfile::tempdir().unwrap();
    let inputs = tempfile::tempdir().unwrap();
    let ca = ca_pem(inputs.path());
    let ds = path_str(dest.path());
    let cases: &[(&[&str], &str)] = &[
        (
            &["--npu-profile", "hailo-9"],
            "--npu-profile hailo-9 is not a known NPU; valid: hailo-8l, hailo-8, rk3588, dx-m1",
        ),
        (&["--site"], "--site needs a value"),
        (&["--site", "--line", "l1"], "--site needs a value"),
        (&["--device", "a/b"], "--device a/b"),
        (&["--device", "d1,d1"], "--device d1 is given twice"),
        (
            &["--broker", "http://h"],
            "--broker http://h: unknown scheme",
        ),
        (
            &["--broker", "mqtt://u:secret@h"],
            "--broker takes no credentials",
        ),
        (
            &["--model-public-key", "abc"],
            "--model-public-key must be 64 hex digits",
        ),
        (
            &["--broker", "mqtt://h", "--tls-ca-file", path_str(&ca)],
            "--tls-ca-file needs an mqtts:// --broker",
        ),
        (
            &["--password-file", path_str(&ca)],
            "--password-file needs --username",
        ),
        (
            &["--upgrade", "--site", "s1"],
            "--site writes the configuration",
        ),
        (&["--purge"], "--purge goes with --uninstall"),
        (
            &["--force-config"],
            "--force-config replaces the configuration",
        ),
        (
            &["--upgrade", "--rollback"],
            "--rollback cannot be combined with --upgrade",
        ),
        (&["--bogus"], "unknown argument --bogus"),
    ];
    for (flags, message) in cases {
        let mut args = vec!["--destdir", ds, "--binary", BIN];
        args.extend_from_slice(flags);
        let run = install(&args);
        assert_eq!(run.code, 2, "{flags:?}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(message), "{flags:?}: {}", run.stderr);
        assert!(!run.stderr.contains("secret"), "{}", run.stderr);
    }
    for (flags, message) in [
        (
            ["--root", "relative/dir", "--dry-run"],
            "--root must be an absolute path: relative/dir",
        ),
        (
            ["--root", "/", "--dry-run"],
            "--root / is the running system",
        ),
        (["--root", ds, "--destdir"], "--destdir needs a value"),
    ] {
        let run = install(&flags);
        assert_eq!(run.code, 2, "{flags:?}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(message), "{flags:?}: {}", run.stderr);
    }
    let both = install(&["--root", ds, "--destdir", ds, "--dry-run"]);
    assert_eq!(both.code, 2);
    assert!(
        both.stderr
            .contains("--root and --destdir exclude each other")
    );
    // A refused run leaves nothing behind.
    assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);
}

#[test]
fn destdir_stages_a_checked_config_without_privileges() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    let inputs = tempfile::tempdir().unwrap();
    let ca = ca_pem(inputs.path());
    let flags = [
        "--destdir",
        path_str(d),
        "--binary",
        BIN,
        "--broker",
        "mqtts://10.0.0.5",
        "--site",
        "plant-2",
        "--line",
        "l2",
        "--device",
        "dx,dy",
        "--npu-profile",
        "dx-m1",
        "--tls-ca-file",
        path_str(&ca),
    ];
    let first = install(&flags).ok();
    assert!(
        first.says("passes loopline-agent --check-config"),
        "{}",
        first.stdout
    );
    assert!(
        first.says("skipped (--destdir): useradd"),
        "{}",
        first.stdout
    );
    assert!(first.says("staged under"));
    let config = installed_config(d);
    assert_eq!(config.site, "plant-2");
    assert_eq!(config.devices, ["dx", "dy"]);
    assert_eq!(config.npu_profile, Profile::DxM1);
    assert_eq!(config.broker.port, 8883, "mqtts:// defaults to 8883");
    assert!(config.broker.credentials.is_none());
    // No credentials given: agent.env is the shipped example.
    assert_eq!(
        fs::read(d.join(ENV_PATH)).unwrap(),
        fs::read(deploy_dir().join("agent.env")).unwrap()
    );
    assert!(d.join(WANTS_PATH).symlink_metadata().is_err());

    let again = install(&flags).ok();
    assert_eq!(
        again.stdout.matches("unchanged: ").count(),
        4,
        "{}",
        again.stdout
    );

    // A configuration the agent refuses is never installed: a CA file without a certificate.
    let other = tempfile::tempdir().unwrap();
    let not_pem = inputs.path().join("not.pem");
    fs::write(&not_pem, "not a certificate\n").unwrap();
    let mut refused_flags = flags.to_vec();
    refused_flags[1] = path_str(other.path());
    refused_flags[15] = path_str(&not_pem);
    let refused = install(&refused_flags);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused
            .stderr
            .contains("does not pass loopline-agent --check-config"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("holds no PEM certificate"),
        "{}",
        refused.stderr
    );
    assert_eq!(fs::read_dir(other.path()).unwrap().count(), 0);
}

#[test]
fn a_foreign_binary_skips_the_config_check() {
    // This build's binary, marked as built for the other common board CPU (ELF e_machine).
    let inputs = tempfile::tempdir().unwrap();
    let mut bytes = fs::read(BIN).unwrap();
    let (machine, name) = if std::env::consts::ARCH == "aarch64" {
        (0x3e_u8, "x86_64")
    } else {
        (0xb7_u8, "aarch64")
    };
    bytes[18] = machine;
    bytes[19] = 0;
    let foreign = inputs.path().join("loopline-agent");
    fs::write(&foreign, &bytes).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let run = install(&[
        "--destdir",
        path_str(dest.path()),
        "--binary",
        path_str(&foreign),
        "--site",
        "s9",
    ])
    .ok();
    assert!(
        run.says(&format!(
            "skipped loopline-agent --check-config: {} is built for {name}",
            path_str(&foreign)
        )),
        "{}",
        run.stdout
    );
    assert!(
        fs::read_to_string(dest.path().join(TOML_PATH))
            .unwrap()
            .contains("site = \"s9\"")
    );
}
