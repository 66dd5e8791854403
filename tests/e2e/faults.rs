use std::time::Duration;

use crate::harness::Broker;
use crate::pipeline::{start_agent, start_ingest};

/// When the lake cannot take a file, ingest stops at once with an error that names the path
/// and says what was lost, instead of carrying on or hanging.
#[test]
fn a_lake_that_cannot_be_written_stops_ingest_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let lake = logs.join("lake");
    // A file where the site's partition folder must go.
    std::fs::create_dir_all(lake.join("telemetry")).unwrap();
    std::fs::write(lake.join("telemetry/site=plant-e2e"), "in the way").unwrap();
    let broker = Broker::start(logs);
    let mut ingest = start_ingest(&broker, &lake, logs, &[]);
    let mut agent = start_agent(&broker, "line-f", "d1", 5, logs);
    assert!(agent.wait(Duration::from_secs(60)).success());

    let status = ingest.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "ingest exited with {status}");
    let stderr = ingest.stderr();
    assert!(stderr.contains("site=plant-e2e"), "{stderr}");
    assert!(stderr.contains("ingest failed"), "{stderr}");
    assert!(
        stderr.contains("nothing unwritten was acknowledged"),
        "{stderr}"
    );
}
