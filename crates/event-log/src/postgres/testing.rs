//! A throwaway PostgreSQL server for tests (cargo feature `pg-testing`):
//! Debian's binaries, `initdb` into a temporary directory, a free port on
//! 127.0.0.1, one database per test. It never touches a server it did not
//! start, and is not for production.
//!
//! PostgreSQL refuses to run as root, and tests run as root here and in CI,
//! so as root the server runs as Debian's `postgres` user (`runuser`). Each
//! server has a watchdog process that stops it and removes its directory as
//! soon as the test process lets go of it: when the [`TestServer`] is
//! dropped, and also when the process exits without dropping it (a shared
//! server in a `static`, a panic, a `kill -9`). Nothing is left running.
//!
//! The methods block (they run `initdb`, `pg_ctl` and `psql`); call them
//! from async tests freely, they are short after the first start.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::PgStoreConfig;

/// The database superuser the test server is created with (trust
/// authentication, no password).
pub const USER: &str = "baton";

/// How long a start, a stop or readiness may take before it is an error.
const DEADLINE: Duration = Duration::from_secs(60);

/// Ports tried before giving up, when another process takes the free port
/// between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 10;

/// Why the test server could not do what was asked; the message says what
/// ran and what it printed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("test PostgreSQL: {0}")]
pub struct TestServerError(String);

impl From<std::io::Error> for TestServerError {
    fn from(e: std::io::Error) -> TestServerError {
        TestServerError(e.to_string())
    }
}

/// A PostgreSQL server in a temporary directory; see the module docs.
#[derive(Debug)]
pub struct TestServer {
    /// Owned by the server's user; removed by the watchdog.
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// `Some("postgres")` when the server must not run as the current user.
    run_as: Option<&'static str>,
    /// Stops the server and removes `dir` when its stdin closes.
    watchdog: Mutex<Option<Child>>,
    databases: AtomicU64,
}

impl TestServer {
    /// Starts a new server of its own (for a test that stops or restarts
    /// it). Most tests share one: [`TestServer::shared`].
    pub fn start() -> Result<TestServer, TestServerError> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new().prefix("baton-pg-").tempdir()?;
        let run_as = if is_root(dir.path())? {
            Some("postgres")
        } else {
            None
        };
        if let Some(user) = run_as {
            run(Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path()))?;
        }
        let mut server = TestServer {
            dir,
            bin,
            port: 0,
            run_as,
            watchdog: Mutex::new(None),
            databases: AtomicU64::new(0),
        };
        // The watchdog first: from here on, whatever fails, dropping
        // `server` (or the process ending) cleans up.
        server.spawn_watchdog()?;
        let data = server.data_dir();
        run(server
            .as_server_user(&server.bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C"])
            // Syncing initdb's files would only slow tests down: a crash of
            // the machine ends the test anyway. The server itself runs with
            // fsync on.
            .args(["--no-sync", "--no-instructions"]))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => break,
                Err(e) if attempt < PORT_ATTEMPTS && server.log().contains("could not bind") => {
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        server.wait_ready()?;
        Ok(server)
    }

    /// One server for the whole test process, started on first use and
    /// stopped by its watchdog when the process exits.
    pub fn shared() -> Result<&'static TestServer, TestServerError> {
        static SHARED: OnceLock<Result<TestServer, TestServerError>> = OnceLock::new();
        SHARED
            .get_or_init(TestServer::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, empty database and returns its URL. Tests that each
    /// take one are independent while sharing the server.
    pub fn create_database(&self) -> Result<String, TestServerError> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("t_{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// A [`PgStoreConfig`] for shard 0 of a new database.
    pub fn store_config(&self) -> Result<PgStoreConfig, TestServerError> {
        let url = self.create_database()?;
        let mut config = PgStoreConfig::new(url);
        // Fail fast in tests rather than wait for a server that is gone.
        config.connect_timeout = Duration::from_secs(5);
        Ok(config)
    }

    /// Runs SQL with `psql` against `database` and returns what it printed
    /// (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, TestServerError> {
        run(Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", USER, "-d", database])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "10"))
    }

    /// Stops the server at once, without a shutdown checkpoint: what a
    /// crash or `kill -9` of PostgreSQL leaves. [`TestServer::restart`]
    /// then goes through crash recovery.
    pub fn stop_immediately(&self) -> Result<(), TestServerError> {
        run(&mut self.stop_command()).map(drop)
    }

    fn stop_command(&self) -> Command {
        let mut command = self.as_server_user(&self.bin.join("pg_ctl"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"]);
        command
    }

    /// Starts the server again on the same port and data directory, and
    /// waits until it answers.
    pub fn restart(&self) -> Result<(), TestServerError> {
        self.pg_ctl_start()?;
        self.wait_ready()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A command that runs `program` as the server's user.
    fn as_server_user(&self, program: &Path) -> Command {
        match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn pg_ctl_start(&self) -> Result<(), TestServerError> {
        let dir = self.dir.path().display();
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=on \
             -c max_connections=200",
            port = self.port
        );
        run(self
            .as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", &DEADLINE.as_secs().to_string()])
            .arg("-o")
            .arg(options)
            .arg("start"))
        .map(drop)
        .map_err(|e| TestServerError(format!("{e}\nserver log:\n{}", tail(&self.log()))))
    }

    /// Polls until the server accepts connections or the deadline passes.
    fn wait_ready(&self) -> Result<(), TestServerError> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-t", "2", "-U", USER])
                .arg("-p")
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestServerError(format!(
                    "the server did not answer on port {} within {DEADLINE:?}\nserver log:\n{}",
                    self.port,
                    tail(&self.log())
                )));
            }
        }
    }

    /// A shell in its own process group (so a Ctrl-C aimed at the tests
    /// does not kill it first) that waits for its stdin to close, then
    /// stops the server and removes the directory.
    fn spawn_watchdog(&mut self) -> Result<(), TestServerError> {
        use std::os::unix::process::CommandExt;
        let stop = self.stop_command();
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"cat >/dev/null; "$@" >/dev/null 2>&1; rm -rf "$BATON_PG_DIR""#)
            .arg("baton-pg-watchdog")
            .arg(stop.get_program())
            .args(stop.get_args())
            .env("BATON_PG_DIR", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        *self.watchdog.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let child = self
            .watchdog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = child {
            // Closing its stdin tells it to stop the server; waiting for it
            // means the server is gone when the drop returns.
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// Debian's PostgreSQL binaries (`/usr/lib/postgresql/<version>/bin`, the
/// newest), installing the package with `scripts/install-postgres.sh` when
/// there are none. `BATON_PG_BIN` names another directory.
fn binaries() -> Result<PathBuf, TestServerError> {
    if let Some(dir) = std::env::var_os("BATON_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = debian_binaries() {
        return Ok(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-postgres.sh");
    run(Command::new("bash").arg(&script))?;
    debian_binaries().ok_or_else(|| {
        TestServerError(format!(
            "{} ran, but there is still no /usr/lib/postgresql/*/bin/initdb",
            script.display()
        ))
    })
}

fn debian_binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Whether we are root: the owner of a directory we just made.
fn is_root(dir: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)?.uid() == 0)
}

/// A port that was free a moment ago; the caller retries on a collision.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs a command to completion; its stdout on success, else an error with
/// everything it printed.
fn run(command: &mut Command) -> Result<String, TestServerError> {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| TestServerError(format!("could not run {what}: {e}")))?;
    // stderr is read on a thread so that neither pipe can fill and block.
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    });
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let status = child.wait()?;
    let errors = errors.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(TestServerError(format!(
            "{what} failed ({status}):\n{out}{errors}"
        )))
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
