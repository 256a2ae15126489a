//! A throwaway PostgreSQL cluster for a test (TESTING.md): `initdb` in a temporary folder as
//! the `postgres` user, listening on a free loopback port, stopped and deleted on drop.

use std::path::PathBuf;
use std::process::Command;

/// A running cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub url: String,
}

/// Finds PostgreSQL's programs (Debian keeps them out of PATH).
fn bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn as_postgres(program: PathBuf, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&program)
        .args(args)
        .output()
        .expect("running runuser");
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this machine can run a cluster (the package is installed, we are root).
pub fn available() -> bool {
    bin("initdb").exists() && crate::is_root()
}

impl Postgres {
    /// Creates and starts a cluster.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("drover-pg-")
            .tempdir()
            .unwrap();
        let port = crate::server::free_port();
        let d = dir.path().to_str().unwrap().to_string();
        let out = Command::new("chown")
            .args(["postgres:postgres", &d])
            .output()
            .unwrap();
        assert!(out.status.success(), "chown: {out:?}");
        let data = format!("{d}/data");
        as_postgres(
            bin("initdb"),
            &["-D", &data, "-A", "trust", "-U", "postgres"],
        );
        as_postgres(
            bin("pg_ctl"),
            &[
                "-D",
                &data,
                "-l",
                &format!("{d}/log"),
                "-o",
                &format!("-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off"),
                "-w",
                "start",
            ],
        );
        Self {
            dir,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}
