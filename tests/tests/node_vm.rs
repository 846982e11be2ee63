//! The single-node proof: images/single-node.toml booted with `kiln run` (UEFI, software
//! emulation), then the real `kubectl` on the host through the 127.0.0.1 forward: the node is
//! Ready under the fw_cfg hostname, CoreDNS serves, a Deployment of the baked busybox image
//! answers behind a Service by DNS name from a third pod (both replicas) and through a
//! NodePort from the host, the scheduler leaves an oversized pod Pending, each component
//! logs to the journal under its own name and systemd pets the hardware watchdog, a Secret
//! and a ConfigMap are mounted (the Secret encrypted in etcd), the kubelet restarts an
//! exiting container, a deleted pod is replaced, a rollout is undone, every component heals
//! within its budget from kill -9, SIGSTOP and a frozen cgroup (a hang in state S) with the
//! reason in `firstboot status` and the workloads untouched, a reboot keeps name, PKI, data
//! and workloads, a hung PID 1 is reset by the i6300esb watchdog and the node comes back
//! with its data, `kiln health`, `kiln status` and `kiln logs` read the node from the host
//! (health names etcd while it is stopped), and Ctrl-C shuts the guest down through ACPI.
//! Then the hybrid ISO (SeaBIOS) boots to node Ready, and the PXE bundle with `kiln run
//! --detach`, which returns at node Ready; `kiln run --stop` powers it off. On failure the console tail, `kubectl
//! get` output and `firstboot status` are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::{free_port, images, kiln_bin, text, workspace_root};

const HOSTNAME: &str = "kiln-proof";
const BUSYBOX: &str = "kiln.local/busybox:1.35.0";
const NODE_PORT: u16 = 30080;

fn kubectl_bin() -> PathBuf {
    let def = kiln::definition::load(&workspace_root().join("images/single-node.toml")).unwrap();
    let cache = kiln_tests::kiln_cache();
    let k8s = def.go.iter().find(|g| g.name == "kubernetes").unwrap();
    let out = kiln::gobuild::build(
        k8s,
        def.epoch,
        &kiln::gobuild::GoEnv::new(&cache).unwrap(),
        false,
    )
    .unwrap();
    out.binaries
        .iter()
        .find(|b| b.name == "kubectl")
        .unwrap()
        .path
        .clone()
}

struct Node {
    run: Child,
    state: tempfile::TempDir,
    kubectl: PathBuf,
    started: Instant,
}

impl Node {
    fn console(&self) -> String {
        let b = std::fs::read(self.state.path().join("console.log")).unwrap_or_default();
        String::from_utf8_lossy(&b).into_owned()
    }

    fn kubeconfig(&self) -> PathBuf {
        self.state.path().join("admin.kubeconfig")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--request-timeout=60s")
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs kubectl, panicking with the node's state on failure.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        if !o.status.success() {
            self.fail(&format!("kubectl {args:?}: {}", text(&o)));
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn apply(&self, manifest: &str) {
        let path = self.state.path().join("m.yaml");
        std::fs::write(&path, manifest).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    fn wait_console(&self, needle: &str, timeout: Duration) {
        self.wait_console_count(needle, 1, timeout);
    }

    /// Waits until `needle` has appeared `n` times on the console (boots of one run).
    fn wait_console_count(&self, needle: &str, n: usize, timeout: Duration) {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.console().matches(needle).count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        self.fail(&format!(
            "no {needle:?} (#{n}) on the console within {timeout:?}"
        ));
    }

    /// Runs a shell script on the node itself, in PID 1's namespaces, through the
    /// privileged hostPID/hostNetwork pod `host`.
    fn host_sh(&self, script: &str) -> Output {
        self.kubectl(&[
            "exec", "host", "--", "nsenter", "-t", "1", "-m", "-u", "-i", "-n", "--", "/bin/sh",
            "-c", script,
        ])
    }

    /// Like `host_sh`, panicking with the node's state on failure.
    fn host_ok(&self, script: &str) -> String {
        let o = self.host_sh(script);
        if !o.status.success() {
            self.fail(&format!("on the node: {script}: {}", text(&o)));
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// When a [`Disruption::script`] sent its signal (ms since boot, the supervisor's
    /// clock), once it has.
    fn signal_ms(&self) -> Option<u64> {
        let signal = self.host_sh("cat /run/kiln-test-signal");
        let up: f64 = String::from_utf8_lossy(&signal.stdout)
            .trim()
            .parse()
            .ok()?;
        Some((up * 1000.0) as u64)
    }

    /// `comp`'s row of `firstboot status --json` on the node, if the node answers.
    fn try_component(&self, comp: &str) -> Option<Supervised> {
        let o = self.host_sh("firstboot status --json");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let rows = v["components"].as_array()?;
        let row = rows.iter().find(|r| r["name"] == comp)?;
        Some(Supervised(row.clone()))
    }

    fn component(&self, comp: &str) -> Supervised {
        self.try_component(comp)
            .unwrap_or_else(|| self.fail(&format!("no {comp} in firstboot status")))
    }

    /// Node Ready, by the API.
    fn node_ready(&self) -> bool {
        let o = self.kubectl(&[
            "get",
            "node",
            HOSTNAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        o.status.success() && String::from_utf8_lossy(&o.stdout) == "True"
    }

    /// Retries `f` until it returns Some, or fails the test after `timeout`.
    fn eventually<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let t = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if t.elapsed() >= timeout {
                self.fail(&format!("{what}: not within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    fn fail(&self, why: &str) -> ! {
        let console = self.console();
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        let pods = self.kubectl(&["get", "pods", "-A", "-o", "wide"]);
        let events = self.kubectl(&["get", "events", "-A"]);
        // Best effort: only once the `host` pod runs.
        let status = self.kubectl(&[
            "exec",
            "host",
            "--",
            "nsenter",
            "-t",
            "1",
            "-m",
            "--",
            "/usr/bin/firstboot",
            "status",
        ]);
        panic!(
            "{why}\n--- console tail\n{}\n--- pods\n{}\n--- events\n{}\n--- firstboot status\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            text(&pods),
            text(&events),
            text(&status)
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.run.kill();
        let _ = self.run.wait();
        // kiln run's QEMU child dies with it only on a clean stop; make sure.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(
                self.state
                    .path()
                    .join("console.log")
                    .to_string_lossy()
                    .as_ref(),
            )
            .status();
    }
}

fn http_get(port: u16) -> Option<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.").then_some(body)
}

/// `kiln run IMAGE` with the test's hostname and forwards, output to files in its state dir.
fn boot(image: &Path, extra: &[&str]) -> Node {
    let state = tempfile::tempdir().unwrap();
    let api_port = free_port();
    let run = Command::new(kiln_bin())
        .arg("run")
        .arg(image)
        .args(["--hostname", HOSTNAME, "--state-dir"])
        .arg(state.path())
        .args(["--api-port", &api_port.to_string()])
        .args(["--node-port", &NODE_PORT.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(state.path().join("run.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    Node {
        run,
        state,
        kubectl: kubectl_bin(),
        started: Instant::now(),
    }
}

/// SIGINT to `kiln run`: it powers the guest off through ACPI and exits cleanly.
fn power_off(mut node: Node) {
    let pid = node.run.id();
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = node.run.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(300) {
            node.fail("kiln run did not stop within 300 s of SIGINT");
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(status.success(), "kiln run exited with {status}");
    let err = std::fs::read_to_string(node.state.path().join("run.err")).unwrap();
    assert!(err.contains("ACPI"), "{err}");
    assert!(err.contains("kiln: try: kiln health --state-dir"), "{err}");
    assert!(
        !err.contains("killing it"),
        "the guest ignored the power button: {err}"
    );
}

/// The supervised components, dependencies first.
const COMPONENTS: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
];
const CONTROL_PLANE: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// A component's row of `firstboot status --json` (times: ms since boot).
struct Supervised(serde_json::Value);

impl Supervised {
    fn ms(&self, key: &str) -> Option<u64> {
        self.0[key].as_u64()
    }

    fn pid(&self) -> Option<i64> {
        self.0["pid"].as_i64()
    }

    /// Spawn to ready of its first run, if it has never been restarted.
    fn cold_start_ms(&self) -> Option<u64> {
        if self.0["restarts"].as_u64() != Some(0) {
            return None;
        }
        self.ms("ready_at_ms")?
            .checked_sub(self.ms("started_at_ms")?)
    }
}

/// How the tests break a running component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    Kill,
    Stop,
    Freeze,
}

impl std::fmt::Display for Disruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Disruption::Kill => "kill -9",
            Disruption::Stop => "SIGSTOP",
            Disruption::Freeze => "cgroup freeze",
        })
    }
}

impl Disruption {
    /// A script for the node that breaks `pid` 2 s later (so the `kubectl exec` that starts
    /// it has returned), first writing the time (/proc/uptime, the supervisor's clock) to
    /// /run/kiln-test-signal; a frozen process's /proc stat line goes to /run/kiln-test-stat.
    fn script(self, pid: i64) -> String {
        let now = "read up rest </proc/uptime; echo $up >/run/kiln-test-signal";
        let act = match self {
            Disruption::Kill => format!("{now}; kill -KILL {pid}"),
            Disruption::Stop => format!("{now}; kill -STOP {pid}"),
            Disruption::Freeze => format!(
                "g=/sys/fs/cgroup/kiln-test-hang; mkdir -p $g; echo 0 >$g/cgroup.freeze; \
                 echo {pid} >$g/cgroup.procs; \
                 {now}; echo 1 >$g/cgroup.freeze; sleep 1; cat /proc/{pid}/stat >/run/kiln-test-stat"
            ),
        };
        format!(
            "rm -f /run/kiln-test-signal /run/kiln-test-stat; \
             setsid sh -c 'sleep 2; {act}' </dev/null >/dev/null 2>&1 &"
        )
    }

    /// What `firstboot status` must give as the reason of the restart.
    fn reason(self) -> &'static str {
        match self {
            Disruption::Kill => "exited with status 137",
            Disruption::Stop => "stopped (state T)",
            Disruption::Freeze => "used no CPU",
        }
    }
}

/// How one disruption healed, from the supervisor's own record (ms after the signal).
struct Healed {
    component: &'static str,
    how: Disruption,
    /// Until the process was reaped (a hang must first be seen).
    detected_ms: Option<u64>,
    respawned_ms: u64,
    ready_ms: u64,
}

impl std::fmt::Display for Healed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} after {}: reaped {:?} ms, respawned {} ms, ready {} ms after the signal",
            self.component, self.how, self.detected_ms, self.respawned_ms, self.ready_ms
        )
    }
}

/// The most a restart may take beyond the component's own start: detection, grace, backoff.
const HEAL_BUDGET_MS: u64 = 10_000;

/// Breaks `comp` the way `how` says and waits until it runs again under a new pid, ready,
/// with the node Ready and the API and exec working; asserts the reason and the budget.
fn heal(node: &Node, comp: &'static str, how: Disruption) -> Healed {
    // A component running fine: ready, and no crash within its stable period (the
    // controller manager and the scheduler exit when the apiserver goes away), so what is
    // measured is the healing, not the backoff of an earlier crash.
    let old = node.eventually(
        &format!("{comp} ready, with no recent crash, before {how}"),
        Duration::from_secs(300),
        || {
            let c = node.try_component(comp)?;
            (c.0["ready"] == true && c.0["consecutive_failures"] == 0).then_some(c)
        },
    );
    let pid = old
        .pid()
        .unwrap_or_else(|| node.fail(&format!("{comp}: no pid")));
    node.host_ok(&how.script(pid));
    // The first respawn seen holds the supervisor's reason and its reaction time. On a slow
    // machine the new run may itself fail while it starts (an apiserver post-start hook
    // timing out exits 255) and be started once more before it is ready: that later failure
    // is not the disruption's.
    let mut first: Option<Supervised> = None;
    let (now, signal_ms) = node.eventually(
        &format!("{comp} running again after {how}"),
        Duration::from_secs(600),
        || {
            let signal_ms = node.signal_ms()?;
            let now = node.try_component(comp)?;
            let respawned = now.pid().is_some_and(|p| p != pid)
                && now.ms("started_at_ms").is_some_and(|t| t + 20 >= signal_ms);
            if respawned && first.is_none() {
                first = Some(Supervised(now.0.clone()));
            }
            (respawned && now.0["ready"] == true).then_some((now, signal_ms))
        },
    );
    let first = first.unwrap_or_else(|| Supervised(now.0.clone()));
    if first.pid() != now.pid() {
        eprintln!(
            "{comp} after {how}: started again before it was ready ({:?})",
            now.0["last_failure"]
        );
    }
    if comp == "kube-apiserver" {
        // Ready means usable: right after the supervisor calls the new apiserver ready, the
        // admin's requests are authorized, by the apiserver and by the kubelet (no 403).
        for _ in 0..3 {
            let get = node.kubectl(&["get", "namespace", "kube-system", "-o", "name"]);
            assert!(get.status.success(), "after {how}: {}", text(&get));
            let exec = node.kubectl(&["exec", "host", "--", "true"]);
            assert!(
                !text(&exec).contains("Forbidden"),
                "after {how}: {}",
                text(&exec)
            );
        }
    }
    node.eventually(
        &format!("the node healthy again after {how} of {comp}"),
        Duration::from_secs(600),
        || {
            let healthy = node.kubectl(&["get", "--raw", "/readyz"]).status.success()
                && node.node_ready()
                && node
                    .kubectl(&["exec", "host", "--", "true"])
                    .status
                    .success();
            healthy.then_some(())
        },
    );
    let why = first.0["last_failure"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains(how.reason()), "{comp} after {how}: {why:?}");
    if how == Disruption::Freeze {
        let stat = node.host_ok("cat /run/kiln-test-stat");
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        assert_eq!(state, Some("S"), "{comp} frozen: {stat}");
    }
    let after = |row: &Supervised, key: &str| row.ms(key).map(|t| t.saturating_sub(signal_ms));
    let healed = Healed {
        component: comp,
        how,
        detected_ms: after(&first, "exited_at_ms"),
        respawned_ms: after(&first, "started_at_ms").unwrap_or(u64::MAX),
        ready_ms: after(&now, "ready_at_ms").unwrap_or(u64::MAX),
    };
    assert!(
        healed.respawned_ms <= HEAL_BUDGET_MS,
        "over budget: {healed}"
    );
    healed
}

/// systemd's restart delay and watchdog for firstboot (firstboot.service).
const FIRSTBOOT_RESTART_SEC: u64 = 2;
const FIRSTBOOT_WATCHDOG_SEC: u64 = 10;

/// Breaks firstboot itself the way `how` says (kill -9, or SIGSTOP: a hang its watchdog
/// must see) and waits until a new firstboot runs and has adopted every component: the same
/// pids, each ready again. Returns ms from the signal until the new firstboot adopted them.
fn firstboot_restart(node: &Node, how: Disruption) -> u64 {
    let main_pid = || -> Option<i64> {
        let o = node.host_sh("systemctl show -p MainPID --value firstboot.service");
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    let old = main_pid()
        .filter(|p| *p > 0)
        .unwrap_or_else(|| node.fail("no firstboot main pid"));
    let pids: Vec<Option<i64>> = COMPONENTS.iter().map(|c| node.component(c).pid()).collect();
    assert!(pids.iter().all(Option::is_some), "{pids:?}");
    let ready_line = format!("kiln: node {HOSTNAME} Ready");
    let ready_lines = node.console().matches(&ready_line).count();
    let adoption_line = "kiln: adopted 7 running components";
    let adoptions = node.console().matches(adoption_line).count();
    node.host_ok(&how.script(old));
    let (signal_ms, adopted_ms) = node.eventually(
        &format!("a new firstboot adopting every component after {how} of firstboot"),
        Duration::from_secs(300),
        || {
            let signal_ms = node.signal_ms()?;
            main_pid().filter(|p| *p > 0 && *p != old)?;
            let mut adopted = 0;
            for (comp, pid) in COMPONENTS.iter().zip(&pids) {
                let now = node.try_component(comp)?;
                let at = now.ms("adopted_at_ms").filter(|t| *t > signal_ms)?;
                if now.pid() != *pid || now.0["ready"] != true {
                    return None;
                }
                adopted = adopted.max(at);
            }
            Some((signal_ms, adopted))
        },
    );
    let took = adopted_ms - signal_ms;
    // kill -9: systemd's restart delay; SIGSTOP: the watchdog's timeout first. Then the new
    // firstboot's own start (stage 2 again, the PKI checked, the files compared).
    let bound = 1000
        * match how {
            Disruption::Stop => FIRSTBOOT_WATCHDOG_SEC + FIRSTBOOT_RESTART_SEC + 10,
            _ => FIRSTBOOT_RESTART_SEC + 10,
        };
    assert!(
        took <= bound,
        "firstboot after {how}: adopted after {took} ms"
    );
    // The new firstboot tells node Ready (on the console, and READY=1 to systemd) from the
    // adopted kubelet's heartbeats.
    node.wait_console_count(&ready_line, ready_lines + 1, Duration::from_secs(300));
    assert!(node.node_ready());
    let active = node.host_ok("systemctl is-active firstboot.service");
    assert_eq!(active.trim(), "active", "firstboot after {how}");
    assert_eq!(
        node.console().matches(adoption_line).count(),
        adoptions + 1,
        "no new adoption line on the console after {how}"
    );
    took
}

/// Each component's first spawn and first readiness (ms since the kernel started) from the
/// last timeline firstboot printed on the console (`kiln: timeline {json}`).
fn timeline_spans(console: &str) -> std::collections::BTreeMap<String, (u64, Option<u64>)> {
    let json = console
        .lines()
        .rev()
        .filter_map(|l| l.split_once("kiln: timeline ").map(|(_, j)| j.trim_end()))
        .find_map(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for c in json["components"].as_array().into_iter().flatten() {
        if let (Some(name), Some(start)) = (c["name"].as_str(), c["start_ms"].as_u64()) {
            out.insert(name.to_string(), (start, c["ready_ms"].as_u64()));
        }
    }
    out
}

#[test]
fn single_node_cluster_in_qemu() {
    let built = images::build("images/single-node.toml");
    let node = boot(&built.qcow2(), &[]);

    // Boot to node Ready.
    node.wait_console(
        &format!("kiln: node {HOSTNAME} Ready"),
        Duration::from_secs(1200),
    );
    eprintln!("node Ready after {:.0?}", node.started.elapsed());
    // firstboot's own share and its timeline, drawn by kiln run.
    let share = node.console();
    let share = share
        .lines()
        .find(|l| l.starts_with("kiln: firstboot share "))
        .unwrap_or_else(|| node.fail("no firstboot share line"))
        .to_string();
    eprintln!("{share}");
    let svg_path = node.state.path().join("timeline.svg");
    let svg = node.eventually(
        "kiln run draws the timeline",
        Duration::from_secs(30),
        || std::fs::read_to_string(&svg_path).ok(),
    );
    for name in ["kube-apiserver", "kubelet", "node-ready", "ready after"] {
        assert!(svg.contains(name), "{name} is not in {svg}");
    }
    // The parallel start, from firstboot's timeline: containerd and the kubelet were
    // spawned before the apiserver was ready; what needs the API waited for it.
    let spans = timeline_spans(&node.console());
    let span = |name: &str| {
        spans
            .get(name)
            .copied()
            .unwrap_or_else(|| node.fail(&format!("{name} is not in the timeline: {spans:?}")))
    };
    let api_ready = span("kube-apiserver")
        .1
        .unwrap_or_else(|| node.fail("the timeline has no apiserver readiness"));
    for name in ["containerd", "kubelet"] {
        assert!(
            span(name).0 < api_ready,
            "{name} waited for the apiserver: {spans:?}"
        );
    }
    for name in ["kube-controller-manager", "kube-scheduler", "kube-proxy"] {
        assert!(
            span(name).0 >= api_ready,
            "{name} started before the API: {spans:?}"
        );
    }
    let containerd_ready = span("containerd")
        .1
        .unwrap_or_else(|| node.fail("the timeline has no containerd readiness"));
    assert!(span("kubelet").0 >= containerd_ready, "{spans:?}");
    let run_err = std::fs::read_to_string(node.state.path().join("run.err")).unwrap();
    let node_port_host: u16 = run_err
        .lines()
        .find_map(|l| l.split("http://127.0.0.1:").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| node.fail(&format!("no NodePort forward in {run_err}")));

    if !node.node_ready() {
        node.fail("the API does not say the node is Ready");
    }
    // Node Ready comes before the addons (the admin's RBAC binding does not): CoreDNS is
    // the node's own later milestone, then the API must agree.
    node.wait_console("kiln: coredns ready", Duration::from_secs(900));
    node.ok(&[
        "-n",
        "kube-system",
        "rollout",
        "status",
        "deployment/coredns",
        "--timeout=900s",
    ]);
    eprintln!("CoreDNS ready after {:.0?}", node.started.elapsed());
    // At CoreDNS ready firstboot prints the timeline again, with the later milestones, and
    // where the boot's CPU time went.
    let console = node.console();
    let coredns_timeline = console
        .lines()
        .any(|l| l.contains("kiln: timeline ") && l.contains("\"coredns-ready\""));
    if !coredns_timeline {
        node.fail("no timeline reaches coredns-ready");
    }
    let cpu = console
        .lines()
        .find_map(|l| {
            l.split_once("kiln: cpu at coredns-ready: ")
                .map(|(_, r)| r.to_string())
        })
        .unwrap_or_else(|| node.fail("no `kiln: cpu at coredns-ready` line"));
    eprintln!("CPU at CoreDNS ready: {cpu}");
    for part in [
        "busy ",
        " (kernel ",
        "kube-apiserver ",
        "etcd ",
        "kubelet ",
        "other ",
        // The largest of the unnamed processes, by name: systemd is always among them.
        "(of it ",
        "systemd",
    ] {
        if !cpu.contains(part) {
            node.fail(&format!("the CPU line has no {part:?}: {cpu}"));
        }
    }

    // A Deployment of 2 busybox httpd replicas behind a Service and a NodePort.
    node.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: httpd
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: {NODE_PORT}}}]
"#
    ));
    node.ok(&["rollout", "status", "deployment/web", "--timeout=900s"]);
    let pods = node.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let pods: Vec<&str> = pods.split_whitespace().collect();
    assert_eq!(pods.len(), 2, "{pods:?}");

    // A third pod reaches the Service by its DNS name; both replicas answer.
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "for i in $(seq 40); do wget -q -O - http://web.default.svc.cluster.local/; done"]
"#
    ));
    node.eventually("the client pod completes", Duration::from_secs(600), || {
        let phase = node.ok(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]);
        match phase.as_str() {
            "Succeeded" => Some(()),
            "Failed" => node.fail("the client pod failed"),
            _ => None,
        }
    });
    let answers = node.ok(&["logs", "client"]);
    for p in &pods {
        assert!(answers.contains(p), "{p} never answered: {answers}");
    }

    // The NodePort answers from the host through the forward.
    let body = node.eventually("the NodePort answers", Duration::from_secs(300), || {
        http_get(node_port_host)
    });
    assert!(pods.iter().any(|p| body.contains(p)), "{body}");

    // The scheduler leaves a pod that needs more CPU than the node has Pending.
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: huge}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    resources: {{requests: {{cpu: "64"}}}}
"#
    ));
    node.eventually("Insufficient cpu", Duration::from_secs(300), || {
        let ev = node.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=huge",
        ]);
        ev.contains("Insufficient cpu").then_some(())
    });
    assert_eq!(
        node.ok(&["get", "pod", "huge", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );

    // A privileged hostPID/hostNetwork pod: the tests' way onto the node itself. Pod
    // Security admission enforces `baseline` by default and refuses it, naming the policy;
    // the namespace's own label lets it in.
    let host_pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: host}}
spec:
  hostPID: true
  hostNetwork: true
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    securityContext: {{privileged: true}}
    command: ["sleep", "1000000"]
"#
    );
    let manifest = node.state.path().join("host.yaml");
    std::fs::write(&manifest, &host_pod).unwrap();
    let refused = node.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    let said = text(&refused);
    assert!(
        !refused.status.success() && said.contains("violates PodSecurity \"baseline:latest\""),
        "a privileged pod under the default policy: {said}"
    );
    node.ok(&[
        "label",
        "namespace",
        "default",
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    node.apply(&host_pod);
    node.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/host",
        "--timeout=600s",
    ]);

    // Each component logs to the journal under its own name; systemd pets the watchdog.
    for comp in ["etcd", "kube-apiserver", "kubelet", "containerd"] {
        let lines = node.host_ok(&format!(
            "journalctl -t {comp} -o cat --no-pager | tail -n 3"
        ));
        assert!(!lines.trim().is_empty(), "no journal lines for {comp}");
    }
    let wd = node.host_ok(
        "cat /sys/class/watchdog/watchdog*/identity; systemctl show -p RuntimeWatchdogUSec",
    );
    assert!(
        wd.contains("i6300ESB") && wd.contains("RuntimeWatchdogUSec=30s"),
        "{wd}"
    );

    // A Secret and a ConfigMap mounted into a pod; the Secret is encrypted in etcd.
    node.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=password=kiln-secret-7f3a",
    ]);
    node.ok(&[
        "create",
        "configmap",
        "c1",
        "--from-literal=greeting=hello-from-kiln",
    ]);
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: mounts}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "cat /s/password; echo; cat /c/greeting; echo; exec sleep 1000000"]
    volumeMounts:
    - {{name: s, mountPath: /s}}
    - {{name: c, mountPath: /c}}
  volumes:
  - {{name: s, secret: {{secretName: s1}}}}
  - {{name: c, configMap: {{name: c1}}}}
"#
    ));
    node.eventually(
        "the mounts pod shows both",
        Duration::from_secs(600),
        || {
            let o = node.kubectl(&["logs", "mounts"]);
            let l = String::from_utf8_lossy(&o.stdout).into_owned();
            (l.contains("kiln-secret-7f3a") && l.contains("hello-from-kiln")).then_some(())
        },
    );
    let etcdctl = "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
        --cacert=/var/lib/kiln/pki/etcd/ca.crt \
        --cert=/var/lib/kiln/pki/apiserver-etcd-client.crt \
        --key=/var/lib/kiln/pki/apiserver-etcd-client.key";
    let stored = node.host_ok(&format!(
        "{etcdctl} get /registry/secrets/default/s1 --print-value-only | head -c 64"
    ));
    assert!(stored.starts_with("k8s:enc:"), "{stored:?}");
    assert!(!stored.contains("kiln-secret-7f3a"));
    // The audit log has who created the ConfigMap, and no body: neither value is in it.
    // (The values are spelled out only on the node: this very exec is audited, with its
    // command line in the request URI.)
    let audit = node.host_ok(
        "grep -F '\"verb\":\"create\"' /var/log/kubernetes/audit.log \
         | grep -F '\"resource\":\"configmaps\",\"namespace\":\"default\"' | grep -F kiln-admin; \
         grep -c -e \"kiln-secret-$(echo 7f3a)\" -e \"hello-from-$(echo kiln)\" \
         /var/log/kubernetes/audit.log || true",
    );
    assert!(
        audit.contains("\"level\":\"Metadata\"") && audit.contains("\"resource\":\"configmaps\""),
        "{audit}"
    );
    assert_eq!(audit.lines().last().map(str::trim), Some("0"), "{audit}");

    // The kubelet restarts a container that exits.
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 3; exit 3"]
"#
    ));
    node.eventually("the crasher is restarted", Duration::from_secs(600), || {
        let n = node.ok(&[
            "get",
            "pod",
            "crasher",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ]);
        (n.trim().parse::<u32>().unwrap_or(0) >= 1).then_some(())
    });
    node.ok(&["delete", "pod", "crasher", "--wait=false"]);

    // A deleted pod of the Deployment is replaced.
    node.ok(&["delete", "pod", pods[0], "--wait=false"]);
    node.eventually(
        "the deleted pod is replaced",
        Duration::from_secs(600),
        || {
            let now = node.ok(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ]);
            let now: Vec<&str> = now.split_whitespace().collect();
            (now.len() == 2 && !now.contains(&pods[0])).then_some(())
        },
    );

    // A rollout to a changed template, then `rollout undo` back.
    node.ok(&["set", "env", "deployment/web", "KILN_REV=2"]);
    node.ok(&["rollout", "status", "deployment/web", "--timeout=900s"]);
    let env = "jsonpath={.spec.template.spec.containers[0].env}";
    assert!(node
        .ok(&["get", "deployment", "web", "-o", env])
        .contains("KILN_REV"));
    node.ok(&["rollout", "undo", "deployment/web"]);
    node.ok(&["rollout", "status", "deployment/web", "--timeout=900s"]);
    assert!(!node
        .ok(&["get", "deployment", "web", "-o", env])
        .contains("KILN_REV"));
    assert_eq!(
        node.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ]),
        "3"
    );

    // Self-heal: each component killed (kill -9), stopped (SIGSTOP) and frozen (its cgroup
    // frozen: a hang in state S, as a deadlock looks) from the node itself. The supervisor restarts it within the budget, says why in `firstboot
    // status`, the node is Ready again, and the Deployment's pods run on untouched.
    let web_pods = || {
        node.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.uid}/{.status.containerStatuses[0].restartCount} {end}",
        ])
    };
    // The Deployment's two pods, once the rollout's old ones have gone.
    let pods_before = node.eventually(
        "only the 2 pods of the web Deployment left",
        Duration::from_secs(600),
        || {
            let pods = web_pods();
            (pods.split_whitespace().count() == 2).then_some(pods)
        },
    );
    let cold: Vec<(String, Option<u64>)> = COMPONENTS
        .iter()
        .map(|c| (c.to_string(), node.component(c).cold_start_ms()))
        .collect();
    let mut healed = Vec::new();
    // One kind of disruption for every component, then the next kind: a component is
    // broken again only after the others were, when its restart backoff has had time to
    // reset.
    for how in [Disruption::Kill, Disruption::Stop, Disruption::Freeze] {
        for comp in COMPONENTS {
            let h = heal(&node, comp, how);
            eprintln!("{h}");
            let pods = web_pods();
            if CONTROL_PLANE.contains(&comp) {
                assert_eq!(pods, pods_before, "workloads disturbed by {how} of {comp}");
            } else if pods != pods_before {
                eprintln!("note: the web pods changed after {how} of {comp}: {pods}");
            }
            healed.push(h);
        }
    }
    // The table (ms after the signal; cold: spawn to ready of the first run in this boot),
    // also kept as TSV for the notes and BENCHMARKS.md.
    let mut table =
        String::from("component\tcold_start_ms\tdisruption\treaped_ms\trespawned_ms\tready_ms\n");
    for h in &healed {
        let cold = cold
            .iter()
            .find(|(c, _)| c == h.component)
            .and_then(|(_, ms)| *ms);
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        table += &format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            h.component,
            ms(cold),
            h.how,
            ms(h.detected_ms),
            h.respawned_ms,
            h.ready_ms
        );
    }
    eprint!("{table}");
    let tsv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node_vm-heal.tsv");
    std::fs::write(&tsv, &table).unwrap();

    // firstboot itself killed and hung: systemd restarts it (the watchdog kills the hung
    // one), and the new firstboot adopts the running components instead of restarting the
    // node: the same pids, each ready, the node Ready, the workloads untouched.
    let mut adopted = String::from("disruption\tadopted_ms\n");
    for how in [Disruption::Kill, Disruption::Stop] {
        let took = firstboot_restart(&node, how);
        eprintln!("firstboot after {how}: every component adopted {took} ms after the signal");
        assert_eq!(
            web_pods(),
            pods_before,
            "workloads disturbed by {how} of firstboot"
        );
        adopted += &format!("{how}\t{took}\n");
    }
    let tsv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node_vm-firstboot.tsv");
    std::fs::write(&tsv, &adopted).unwrap();

    // Reboot through systemd: the node comes back under the same name with the same PKI
    // (this kubeconfig still works), etcd's data (the Secret decrypts with the key of the
    // first boot) and its workloads.
    let ca_before =
        node.host_ok("sha256sum /var/lib/kiln/pki/ca.crt /var/lib/kiln/pki/apiserver.crt");
    // Each firstboot run tells node Ready once (the restarted ones above too).
    let ready_line = format!("kiln: node {HOSTNAME} Ready");
    let ready_lines = node.console().matches(&ready_line).count();
    let _ = node.host_sh("systemctl reboot");
    let rebooted = Instant::now();
    node.wait_console_count(&ready_line, ready_lines + 1, Duration::from_secs(1200));
    eprintln!("node Ready {:.0?} after the reboot", rebooted.elapsed());
    assert!(node.node_ready());
    // The host pod's status may still be the one from before the reboot: ask it.
    let ca_after = node.eventually(
        "the host pod answers again",
        Duration::from_secs(600),
        || {
            let o =
                node.host_sh("sha256sum /var/lib/kiln/pki/ca.crt /var/lib/kiln/pki/apiserver.crt");
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        },
    );
    assert_eq!(ca_after, ca_before);
    let secret = node.ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]);
    assert_eq!(secret.trim(), "a2lsbi1zZWNyZXQtN2YzYQ==");
    node.ok(&["rollout", "status", "deployment/web", "--timeout=900s"]);
    let status = node.host_ok("firstboot status --json");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["first-boot"], false, "{status}");
    assert_eq!(status["hostname"], HOSTNAME);

    // A hang of PID 1: systemd's crash handler freezes it on SIGSEGV, so nothing pets the
    // i6300esb any more, and the watchdog resets the machine (RuntimeWatchdogSec=30s). The
    // kernel prints "reboot: Restarting system" for each restart it makes itself (the
    // systemctl reboot above did); none comes before this third boot: the reset was the
    // hardware's. The node comes back Ready with its data.
    let kernel_restarts = || node.console().matches("reboot: Restarting system").count();
    let restarts_before = kernel_restarts();
    assert!(
        restarts_before >= 1,
        "the reboot above left no kernel restart line"
    );
    let ready_lines = node.console().matches(&ready_line).count();
    let _ = node.host_sh("kill -SEGV 1");
    let hung = Instant::now();
    node.wait_console_count(&ready_line, ready_lines + 1, Duration::from_secs(1500));
    eprintln!(
        "node Ready {:.0?} after PID 1 hung (reset by the watchdog)",
        hung.elapsed()
    );
    assert_eq!(kernel_restarts(), restarts_before, "a restart, not a reset");
    let secret = node.eventually(
        "the Secret after the reset",
        Duration::from_secs(600),
        || {
            let o = node.kubectl(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]);
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        },
    );
    assert_eq!(secret.trim(), "a2lsbi1zZWNyZXQtN2YzYQ==");
    assert!(node.node_ready());

    // The operator's view from the host, through the API only.
    host_toolbox(&node);

    // Ctrl-C: kiln run powers the guest off through ACPI and exits.
    power_off(node);

    // The same image from the hybrid ISO under SeaBIOS, and from the PXE bundle (its
    // kernel, initramfs and boot.ipxe command line; the network path through iPXE and TFTP
    // is proven for the same bundle format in boot_paths.rs), each to node Ready.
    let node = boot(&built.iso(), &["--bios"]);
    node.wait_console(
        &format!("kiln: node {HOSTNAME} Ready"),
        Duration::from_secs(1200),
    );
    eprintln!(
        "ISO (SeaBIOS): node Ready after {:.0?}",
        node.started.elapsed()
    );
    assert!(node.node_ready());
    power_off(node);
    // The PXE bundle with --detach: kiln run returns at node Ready, the guest runs on,
    // and `kiln run --stop` powers it off.
    let mut node = boot(&built.pxe(), &["--detach"]);
    let waited = Instant::now();
    let status = loop {
        if let Some(s) = node.run.try_wait().unwrap() {
            break s;
        }
        if waited.elapsed() > Duration::from_secs(1200) {
            node.fail("kiln run --detach did not return within 1200 s");
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let err = std::fs::read_to_string(node.state.path().join("run.err")).unwrap();
    assert!(status.success(), "kiln run --detach: {status}: {err}");
    eprintln!(
        "PXE bundle: node Ready after {:.0?}",
        node.started.elapsed()
    );
    assert!(err.contains("kiln run --stop"), "{err}");
    let pid: u32 = std::fs::read_to_string(node.state.path().join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        kiln_tests::alive(pid as i32),
        "the guest runs on after detaching"
    );
    assert!(node.node_ready());
    let stop = Command::new(kiln_bin())
        .args(["run", "--stop"])
        .arg(node.state.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&stop.stderr);
    assert!(stop.status.success(), "kiln run --stop: {}", text(&stop));
    assert!(
        said.contains("ACPI") && !said.contains("killing it"),
        "{said}"
    );
    assert!(!kiln_tests::alive(pid as i32), "the guest is gone");
    assert!(!node.state.path().join("qemu.pid").exists());
}

/// `kiln` against the node of `kiln run --state-dir`.
fn kiln_at(node: &Node, args: &[&str]) -> Output {
    Command::new(kiln_bin())
        .args(args)
        .arg("--state-dir")
        .arg(node.state.path())
        .output()
        .unwrap()
}

/// `kiln health --json`: its answer and exit code, once it answers at all.
fn health(node: &Node) -> Option<(serde_json::Value, i32)> {
    health_within(node, 15)
}

/// [`health`] with each request's timeout, seconds.
fn health_within(node: &Node, timeout: u64) -> Option<(serde_json::Value, i32)> {
    let o = kiln_at(
        node,
        &["health", "--json", "--timeout", &timeout.to_string()],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    Some((v, o.status.code()?))
}

fn failing(v: &serde_json::Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["ok"] != true)
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `kiln health`, `kiln status` and `kiln logs` from the host: health passes on the Ready
/// node and names etcd while it is stopped (SIGSTOP), then passes again once firstboot has
/// healed it; status shows the node's firstboot status; logs shows this boot's lines of one
/// component.
fn host_toolbox(node: &Node) {
    let (v, code) = node.eventually("kiln health passes", Duration::from_secs(300), || {
        health(node).filter(|(v, _)| v["ok"] == true)
    });
    assert_eq!(code, 0, "{v}");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for want in [
        "apiserver",
        "apiserver-etcd",
        "etcd",
        "kube-apiserver",
        "kubelet",
        "node",
        "coredns",
        "certificates",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let shown = kiln_at(node, &["health"]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.lines().all(|l| l.starts_with("PASS ")), "{shown}");

    let status = kiln_at(node, &["status", "--json"]);
    assert!(status.status.success(), "kiln status: {}", text(&status));
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["hostname"], HOSTNAME);
    assert_eq!(
        st["components"].as_array().map(Vec::len),
        Some(COMPONENTS.len())
    );
    assert!(!st["certificates"].as_array().unwrap().is_empty(), "{st}");

    let logs = kiln_at(node, &["logs", "kube-apiserver"]);
    assert!(logs.status.success(), "kiln logs: {}", text(&logs));
    let lines = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert!(
        lines.lines().count() > 5,
        "kiln logs kube-apiserver: {lines}"
    );
    assert!(
        lines.lines().all(|l| l.contains(" kube-apiserver[")),
        "{lines}"
    );
    // This boot's: the apiserver's pid now is in them.
    let pid = node.component("kube-apiserver").pid().unwrap();
    assert!(
        lines.contains(&format!(" kube-apiserver[{pid}]:")),
        "no line from pid {pid}: {lines}"
    );

    // firstboot heals a stopped etcd within seconds: ask again at once, with short timeouts.
    node.host_ok("kill -STOP $(pidof etcd)");
    let stopped = Instant::now();
    let (v, code) = loop {
        if let Some((v, code)) = health_within(node, 5) {
            if failing(&v).iter().any(|f| f.contains("etcd")) {
                break (v, code);
            }
        }
        if stopped.elapsed() > Duration::from_secs(120) {
            node.fail("kiln health never named etcd while it was stopped");
        }
    };
    assert_eq!(code, 1, "an unhealthy node fails the command: {v}");
    eprintln!("kiln health with etcd stopped: failing {:?}", failing(&v));
    node.eventually(
        "kiln health passes again after firstboot healed etcd",
        Duration::from_secs(600),
        || health(node).filter(|(v, _)| v["ok"] == true),
    );
}
