//! Running generated Python: a subprocess with time, CPU, memory and file-size limits, in a
//! fresh scratch directory, with writes outside it, sockets and new processes refused.
//!
//! Layers, from the outside in:
//! 1. `python3 -I -B` (isolated mode: no user site, no `PYTHON*` variables, no bytecode files) in
//!    its own process group, with a cleared environment whose `HOME`, `TMPDIR` and working
//!    directory are a scratch directory made for this run and removed afterwards.
//! 2. A wall-clock deadline: past it the whole process group gets `SIGKILL`.
//! 3. A wrapper that, before the candidate code runs, sets `RLIMIT_AS` (memory), `RLIMIT_CPU`,
//!    `RLIMIT_FSIZE` and `RLIMIT_CORE` (hard and soft, so the code cannot raise them again) and
//!    installs a `sys.addaudithook` hook (which cannot be removed) that refuses: opening a path
//!    outside the scratch directory for writing, renaming/removing/creating/chmod-ing paths
//!    outside it, changing directory out of it, creating sockets or connecting/binding them,
//!    starting processes (`subprocess`, `os.system`, `exec*`, `fork`, `posix_spawn`) and `ctypes`.
//! 4. stdout and stderr are read concurrently and capped.
//!
//! Audit hooks are not a security boundary against deliberately hostile code (CPython says so);
//! together with the limits they keep honest-but-buggy model output (infinite loops, memory
//! bombs, stray file writes, network calls) from harming the machine or the repository. Run
//! untrusted evaluations in a container as well.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::EvalError;

/// Limits of one sandboxed run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// The Python interpreter.
    pub python: PathBuf,
    /// Wall-clock limit; the process group is killed past it.
    pub timeout: Duration,
    /// CPU-time limit (`RLIMIT_CPU`, seconds).
    pub cpu_seconds: u64,
    /// Address-space limit (`RLIMIT_AS`, bytes).
    pub memory_bytes: u64,
    /// Largest file the program may write (`RLIMIT_FSIZE`, bytes).
    pub file_size_bytes: u64,
    /// Bytes of stdout and of stderr kept (the rest is read and dropped).
    pub max_output_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            python: PathBuf::from("python3"),
            timeout: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_bytes: 1 << 30,
            file_size_bytes: 16 << 20,
            max_output_bytes: 16 << 10,
        }
    }
}

/// How a sandboxed program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exit status 0.
    Passed,
    /// A non-zero exit status (an exception, a failed assertion, a refused operation).
    Failed,
    /// Killed at the wall-clock deadline.
    TimedOut,
    /// Stopped by the CPU-time limit (`SIGXCPU`/`SIGKILL` from the kernel).
    CpuLimit,
    /// Ran out of its address space (`MemoryError`, or killed while allocating).
    MemoryLimit,
    /// Killed by another signal.
    Signaled,
}

/// What a sandboxed run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Terminating signal, when one killed it.
    pub signal: Option<i32>,
    /// Captured stdout (capped).
    pub stdout: String,
    /// Captured stderr (capped).
    pub stderr: String,
    /// Wall-clock time.
    pub elapsed_s: f64,
}

impl RunResult {
    /// Whether the program exited with status 0.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }
}

/// Runs Python programs under [`SandboxConfig`] limits.
#[derive(Debug, Clone)]
pub struct Sandbox {
    config: SandboxConfig,
}

/// The wrapper run with `python3 -c`: limits, audit hook, then the program.
const WRAPPER: &str = r#"
def _install():
    import os, sys, resource
    scratch = os.path.realpath(sys.argv[1])
    program = sys.argv[2]
    mem, cpu, fsize = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with open(program, encoding="utf-8") as f:
        source = f.read()
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    allowed = ("/dev/null",)
    def inside(path):
        if isinstance(path, int):
            return True
        try:
            p = realpath(fsdecode(path))
        except Exception:
            return False
        return p == scratch or p.startswith(scratch + sep) or p in allowed
    path_events = {
        "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
        "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,),
        "os.chown": (0,), "os.utime": (0,), "os.chdir": (0,), "os.chflags": (0,),
        "os.lchflags": (0,), "os.lchmod": (0,), "os.mkfifo": (0,), "os.mknod": (0,),
        "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,),
        "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (1,),
    }
    refused = frozenset((
        "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
        "subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
        "os.forkpty", "pty.spawn", "os.kill", "os.killpg", "os.startfile", "webbrowser.open",
        "urllib.Request", "ftplib.connect", "http.client.connect", "smtplib.connect",
        "resource.setrlimit", "resource.prlimit", "sys.remote_exec",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    ))
    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags)
            if writing and not inside(path):
                raise PermissionError(
                    "sandbox: writing outside the scratch directory is refused: %r" % (path,))
        elif event in path_events:
            for i in path_events[event]:
                if i < len(args) and not inside(args[i]):
                    raise PermissionError(
                        "sandbox: %s outside the scratch directory is refused: %r" % (event, args[i]))
        elif event in refused or event.startswith("ctypes."):
            raise PermissionError("sandbox: %s is refused" % event)
    code = compile(source, program, "exec")
    sys.argv = [program]
    sys.addaudithook(hook)
    return code
_code = _install()
del _install
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"#;

impl Sandbox {
    /// A sandbox with these limits; fails if the interpreter cannot be started.
    pub fn new(config: SandboxConfig) -> Result<Self, EvalError> {
        let status = Command::new(&config.python)
            .args([
                "-I",
                "-c",
                "import resource, sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| {
                EvalError::Sandbox(format!(
                    "cannot start {} (needed to run generated code): {e}",
                    config.python.display()
                ))
            })?;
        if !status.success() {
            return Err(EvalError::Sandbox(format!(
                "{} is not a usable Python 3.8+ with the `resource` module",
                config.python.display()
            )));
        }
        Ok(Self { config })
    }

    /// The limits in force.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Run `program` (Python source) in a fresh scratch directory that is removed afterwards.
    pub fn run(&self, program: &str) -> Result<RunResult, EvalError> {
        let scratch = tempfile::Builder::new()
            .prefix("seqtopk-sandbox-")
            .tempdir()
            .map_err(|e| EvalError::Sandbox(format!("cannot create a scratch directory: {e}")))?;
        let result = self.run_in(scratch.path(), program);
        let path = scratch.path().to_path_buf();
        scratch.close().map_err(|e| {
            EvalError::Sandbox(format!(
                "cannot remove the scratch directory {}: {e}",
                path.display()
            ))
        })?;
        result
    }

    fn run_in(&self, scratch: &Path, program: &str) -> Result<RunResult, EvalError> {
        let c = &self.config;
        let file = scratch.join("program.py");
        std::fs::write(&file, program)
            .map_err(|e| EvalError::Sandbox(format!("cannot write {}: {e}", file.display())))?;
        let start = Instant::now();
        let mut child = Command::new(&c.python)
            .arg("-I")
            .arg("-B")
            .arg("-c")
            .arg(WRAPPER)
            .arg(scratch)
            .arg(&file)
            .arg(c.memory_bytes.to_string())
            .arg(c.cpu_seconds.max(1).to_string())
            .arg(c.file_size_bytes.to_string())
            .current_dir(scratch)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", scratch)
            .env("TMPDIR", scratch)
            .env("LANG", "C.UTF-8")
            .env("PYTHONHASHSEED", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| EvalError::Sandbox(format!("cannot start {}: {e}", c.python.display())))?;
        let pid = child.id();
        let cap = c.max_output_bytes;
        let out = child.stdout.take().map(|s| capped_reader(s, cap));
        let err = child.stderr.take().map(|s| capped_reader(s, cap));
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() >= c.timeout => {
                    timed_out = true;
                    kill_group(pid);
                    let _ = child.kill();
                    break child.wait().map_err(|e| {
                        EvalError::Sandbox(format!("waiting for the killed program: {e}"))
                    })?;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    kill_group(pid);
                    return Err(EvalError::Sandbox(format!("waiting for the program: {e}")));
                }
            }
        };
        // Anything the program left behind in its group goes too.
        kill_group(pid);
        let elapsed_s = start.elapsed().as_secs_f64();
        let stdout = out.map(join_reader).unwrap_or_default();
        let stderr = err.map(join_reader).unwrap_or_default();
        let (exit_code, signal) = (status.code(), status.signal());
        let outcome = self.classify(timed_out, &stderr, exit_code, signal, elapsed_s);
        Ok(RunResult {
            outcome,
            exit_code,
            signal,
            stdout,
            stderr,
            elapsed_s,
        })
    }

    /// What ended a run: the wall-clock timeout, a `MemoryError`, the CPU limit's signals (or a
    /// SIGKILL once the hard CPU limit is passed), another signal, or the exit status.
    fn classify(
        &self,
        timed_out: bool,
        stderr: &str,
        exit_code: Option<i32>,
        signal: Option<i32>,
        elapsed_s: f64,
    ) -> Outcome {
        let c = &self.config;
        if timed_out {
            Outcome::TimedOut
        } else if stderr.contains("MemoryError") {
            Outcome::MemoryLimit
        } else if let Some(sig) = signal {
            match sig {
                // SIGXCPU, or SIGKILL once the hard CPU limit is passed.
                24 => Outcome::CpuLimit,
                9 if elapsed_s + 0.5 >= c.cpu_seconds as f64 => Outcome::CpuLimit,
                // Killed while allocating (e.g. by the kernel when an allocation failed hard).
                6 | 9 | 11 => Outcome::MemoryLimit,
                _ => Outcome::Signaled,
            }
        } else if exit_code == Some(0) {
            Outcome::Passed
        } else {
            Outcome::Failed
        }
    }
}

fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

fn capped_reader(
    mut src: impl Read + Send + 'static,
    cap: usize,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        let mut dropped = 0usize;
        loop {
            match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                    dropped += n.saturating_sub(room);
                }
            }
        }
        let mut s = String::from_utf8_lossy(&kept).into_owned();
        if dropped > 0 {
            s.push_str(&format!("\n[… {dropped} more bytes dropped]"));
        }
        s
    })
}

fn join_reader(h: std::thread::JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

/// Run many programs on `jobs` threads; results in input order.
pub fn run_all(
    sandbox: &Sandbox,
    programs: &[String],
    jobs: usize,
) -> Result<Vec<RunResult>, EvalError> {
    let jobs = jobs.max(1).min(programs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: std::sync::Mutex<Vec<Option<Result<RunResult, EvalError>>>> =
        std::sync::Mutex::new((0..programs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= programs.len() {
                        break;
                    }
                    let r = sandbox.run(&programs[i]);
                    if let Ok(mut slots) = slots.lock() {
                        slots[i] = Some(r);
                    }
                }
            });
        }
    });
    let results = slots
        .into_inner()
        .map_err(|_| EvalError::Sandbox("a worker thread panicked".into()))?;
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(EvalError::Sandbox("a worker thread panicked".into()))))
        .collect()
}
