//! The code sandbox: correct code passes, wrong code fails, an infinite loop and a memory bomb
//! are stopped, and nothing is written outside the scratch directory.

use std::time::Duration;

use seqtopk_eval::evaluate::{humaneval_program, mbpp_program};
use seqtopk_eval::{Outcome, Sandbox, SandboxConfig};

fn sandbox(timeout_s: f64, cpu_s: u64) -> Sandbox {
    Sandbox::new(SandboxConfig {
        timeout: Duration::from_secs_f64(timeout_s),
        cpu_seconds: cpu_s,
        memory_bytes: 512 << 20,
        ..SandboxConfig::default()
    })
    .expect("python3 is available")
}

#[test]
fn a_correct_humaneval_solution_passes_and_a_wrong_one_fails() {
    let sb = sandbox(10.0, 10);
    let prompt = "def add(a: int, b: int) -> int:\n    \"\"\"Sum of a and b.\"\"\"\n";
    let test = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n";
    let good = humaneval_program(prompt, "    return a + b\n", test, "add");
    let r = sb.run(&good).unwrap();
    assert_eq!(r.outcome, Outcome::Passed, "stderr: {}", r.stderr);
    let bad = humaneval_program(prompt, "    return a - b\n", test, "add");
    let r = sb.run(&bad).unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(r.stderr.contains("AssertionError"), "stderr: {}", r.stderr);
    // A chat-style answer that redefines the function inside a fence also runs.
    let fenced = "```python\ndef add(a, b):\n    return a + b\n```\nThis adds.";
    let r = sb
        .run(&humaneval_program(prompt, fenced, test, "add"))
        .unwrap();
    assert_eq!(r.outcome, Outcome::Passed, "stderr: {}", r.stderr);
}

#[test]
fn mbpp_program_runs_the_asserts() {
    let sb = sandbox(10.0, 10);
    let tests = vec![
        "assert square(3) == 9".to_string(),
        "assert square(0) == 0".to_string(),
    ];
    let good = mbpp_program("def square(x):\n    return x * x\n[DONE]", &tests);
    assert!(sb.run(&good).unwrap().passed());
    let bad = mbpp_program("def square(x):\n    return x + x\n[DONE]", &tests);
    assert_eq!(sb.run(&bad).unwrap().outcome, Outcome::Failed);
    let syntax = mbpp_program("def square(x) return", &tests);
    assert_eq!(sb.run(&syntax).unwrap().outcome, Outcome::Failed);
}

#[test]
fn an_infinite_loop_is_killed_at_the_deadline() {
    let sb = sandbox(1.0, 30);
    let r = sb.run("while True:\n    pass\n").unwrap();
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert!(r.elapsed_s < 5.0, "took {}s", r.elapsed_s);
    // Sleeping (no CPU use) is stopped by the wall clock too.
    let r = sb.run("import time\ntime.sleep(60)\n").unwrap();
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert!(r.elapsed_s < 5.0);
}

#[test]
fn a_cpu_hog_hits_the_cpu_limit() {
    let sb = sandbox(20.0, 1);
    let r = sb.run("while True:\n    pass\n").unwrap();
    assert_eq!(r.outcome, Outcome::CpuLimit, "{r:?}");
    assert!(r.elapsed_s < 10.0, "took {}s", r.elapsed_s);
}

#[test]
fn a_memory_bomb_is_stopped() {
    let sb = sandbox(20.0, 20);
    let r = sb
        .run("x = bytearray(8 * 1024 ** 3)\nprint('allocated')\n")
        .unwrap();
    assert_eq!(r.outcome, Outcome::MemoryLimit, "{r:?}");
    assert!(!r.stdout.contains("allocated"));
    // Growing step by step ends the same way, well before the deadline.
    let r = sb
        .run("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n")
        .unwrap();
    assert_eq!(r.outcome, Outcome::MemoryLimit, "{r:?}");
    assert!(r.elapsed_s < 15.0);
}

#[test]
fn writes_outside_the_scratch_directory_are_refused() {
    let sb = sandbox(10.0, 10);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("escaped.txt");
    let attempts = [
        format!("open({:?}, 'w').write('x')\n", target),
        format!(
            "import os\nfd = os.open({:?}, os.O_WRONLY | os.O_CREAT)\n",
            target
        ),
        format!(
            "import pathlib\npathlib.Path({:?}).write_text('x')\n",
            target
        ),
        format!(
            "import shutil\nshutil.copyfile('/etc/hostname', {:?})\n",
            target
        ),
        format!("import os\nos.mkdir({:?})\n", outside.path().join("d")),
        format!("open('../{}', 'w').write('x')\n", "escaped-relative.txt"),
    ];
    for program in &attempts {
        let r = sb.run(program).unwrap();
        assert_eq!(r.outcome, Outcome::Failed, "{program}: {r:?}");
        assert!(r.stderr.contains("sandbox:"), "{program}: {}", r.stderr);
    }
    assert!(!target.exists());
    assert!(!outside.path().join("d").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // Writing inside the scratch directory (the working directory, HOME, TMPDIR) works, and the
    // program sees a fresh one each run.
    let inside = "import os, tempfile\nopen('out.txt', 'w').write('ok')\n\
                  assert open('out.txt').read() == 'ok'\n\
                  assert os.environ['HOME'] == os.getcwd() == tempfile.gettempdir()\n\
                  assert sorted(os.listdir('.')) == ['out.txt', 'program.py'], os.listdir('.')\n\
                  print(os.getcwd())\n";
    let r = sb.run(inside).unwrap();
    assert!(r.passed(), "{r:?}");
    let scratch = std::path::PathBuf::from(r.stdout.trim());
    assert!(
        !scratch.exists(),
        "the scratch directory {} was not removed",
        scratch.display()
    );
}

#[test]
fn network_and_processes_are_refused() {
    let sb = sandbox(10.0, 10);
    for program in [
        "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n",
        "import socket\nsocket.create_connection(('example.com', 80), timeout=1)\n",
        "import subprocess\nsubprocess.run(['true'])\n",
        "import os\nos.system('true')\n",
        "import os\nos.fork()\n",
        "import ctypes\nctypes.CDLL(None)\n",
    ] {
        let r = sb.run(program).unwrap();
        assert_eq!(r.outcome, Outcome::Failed, "{program}: {r:?}");
        assert!(r.stderr.contains("sandbox:"), "{program}: {}", r.stderr);
    }
}

#[test]
fn output_is_capped_and_a_missing_interpreter_is_reported() {
    let sb = Sandbox::new(SandboxConfig {
        max_output_bytes: 1000,
        ..SandboxConfig::default()
    })
    .unwrap();
    let r = sb.run("print('x' * 100000)\n").unwrap();
    assert!(r.passed());
    assert!(r.stdout.len() < 1200 && r.stdout.contains("more bytes dropped"));
    let err = Sandbox::new(SandboxConfig {
        python: "/nonexistent/python3".into(),
        ..SandboxConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/python3"), "{err}");
}
