//! What one action gets from a docker worker, decided from its platform
//! properties within the worker's configuration. Pure functions: no engine.
//!
//! Platform properties an action may set (the worker advertises them with
//! the value `*`, which the matcher treats as "any value"; these rules then
//! decide):
//! - `container-image`: `docker://NAME` or `NAME`; must match one of
//!   `allowed_images` (glob, `*` = any run of characters; default: only
//!   `image`), else FAILED_PRECONDITION naming the allowed images.
//! - `dockerNetwork`: `off` (or `none`) always gets no network; `bridge` gets
//!   the bridge only if the worker's `network_mode` is `bridge` or `host`
//!   (with `none` it silently stays without network: an action never gets
//!   more network than the worker allows). Unset: the worker's `network_mode`.
//! - `dockerUser`: the user inside the container. Any user is honoured,
//!   except root (`root`, `0`, `0:…`) when the worker's `user` is a non-root
//!   user: that is PERMISSION_DENIED. Unset: `user`.
use std::path::Path;

use bollard::models::HostConfig;
use re_proto::{Error, Result};

use super::config::{DockerWorkerConfig, NetworkMode};
use crate::platform::Properties;

/// The platform keys a docker worker decides itself (advertised as `*`).
pub const DOCKER_KEYS: [&str; 3] = ["container-image", "dockerNetwork", "dockerUser"];

/// What one action needs from a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub image: String,
    pub network: NetworkMode,
    pub user: Option<String>,
}

/// What every docker worker advertises before its configured properties.
pub fn docker_properties() -> Properties {
    let mut p: Properties = vec![("OSFamily".into(), "linux".into()), ("container".into(), "docker".into())];
    p.extend(DOCKER_KEYS.iter().map(|k| (k.to_string(), crate::platform::ANY_VALUE.to_string())));
    p
}

fn prop<'a>(platform: &'a Properties, key: &str) -> Option<&'a str> {
    platform.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
}

/// Image, network and user for an action with `platform`, checked against
/// `cfg`; `worker` names the worker in messages.
pub fn resolve(platform: &Properties, cfg: &DockerWorkerConfig, worker: &str) -> Result<Spec> {
    let image = match prop(platform, "container-image") {
        Some(v) => {
            let name = v.strip_prefix("docker://").unwrap_or(v).trim();
            if name.is_empty() {
                return Err(Error::InvalidArgument(format!("container-image '{v}' names no image")));
            }
            let allowed = cfg.allowed_patterns();
            if !allowed.iter().any(|p| glob_match(p, name)) {
                return Err(Error::FailedPrecondition(format!(
                    "container-image '{v}' is not allowed on docker worker {worker}: allowed images are {} (allowed_images)",
                    allowed.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(", ")
                )));
            }
            name.to_string()
        }
        None => cfg.image.clone(),
    };
    let network = match prop(platform, "dockerNetwork") {
        None => cfg.network_mode,
        Some("off") | Some("none") => NetworkMode::None,
        Some("bridge") => NetworkMode::Bridge.min(cfg.network_mode),
        Some(other) => {
            return Err(Error::InvalidArgument(format!("dockerNetwork '{other}' is not one of: off, bridge")))
        }
    };
    let user = match prop(platform, "dockerUser") {
        None => cfg.user.clone(),
        Some(u) => {
            if let Some(own) = cfg.user.as_deref().filter(|c| is_root(u) && !is_root(c)) {
                return Err(Error::PermissionDenied(format!(
                    "dockerUser '{u}' is not allowed: docker worker {worker} runs actions as '{own}' and never as root"
                )));
            }
            Some(u.to_string())
        }
    };
    Ok(Spec { image, network, user })
}

/// Where the worker's directory is mounted in every container (mount mode).
pub const MOUNT_POINT: &str = "/re-server";
/// The action's input root inside the container.
pub const EXEC_ROOT: &str = "/re-server/exec";

/// The HostConfig every container of the worker gets: the configured
/// limits, network, volumes, and (in mount mode) its directory `mnt`.
pub fn host_config(cfg: &DockerWorkerConfig, mnt: Option<&Path>, spec: &Spec, auto_remove: bool) -> HostConfig {
    let mut binds: Vec<String> = mnt.map(|m| format!("{}:{MOUNT_POINT}", m.display())).into_iter().collect();
    binds.extend(
        cfg.volumes.iter().map(|v| {
            format!("{}:{}:{}", v.host_path.display(), v.container_path, if v.read_only { "ro" } else { "rw" })
        }),
    );
    HostConfig {
        binds: Some(binds),
        nano_cpus: cfg.cpu_limit.map(|c| (c * 1e9).round() as i64),
        memory: cfg.memory_limit.map(|m| m as i64),
        memory_swap: cfg.memory_limit.map(|m| m as i64),
        network_mode: Some(spec.network.as_docker().to_string()),
        auto_remove: Some(auto_remove),
        ..Default::default()
    }
}

/// `*` matches any run of characters (including `/` and `:`); the rest literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Hard links share the CAS's inodes: only for a numeric container user the
/// shared rule allows (a name could be root inside the image).
pub fn may_hard_link(user: Option<&str>) -> bool {
    let uid = user.and_then(|u| u.split(':').next()).and_then(|u| u.parse::<u32>().ok());
    crate::user::may_share_cas_files(uid)
}

pub fn is_root(user: &str) -> bool {
    matches!(user.split(':').next().unwrap_or(""), "root" | "0")
}

/// `name[:tag]` or `name@digest` → (name, tag-or-digest) for the pull API.
pub fn split_reference(image: &str) -> (String, String) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name.to_string(), digest.to_string());
    }
    let slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[slash..].rfind(':') {
        Some(i) => (image[..slash + i].to_string(), image[slash + i + 1..].to_string()),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// The `oom_kill` counter from memory.oom_control (v1) or memory.events (v2).
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
}

/// The warm wrapper's report after its marker: `OOM USER_NS SYS_NS PEAK_BYTES`.
pub fn parse_report(text: &str) -> Option<(u64, crate::usage::ResourceUsage)> {
    let mut n = text.split_whitespace().map(|f| f.parse::<i64>().ok().map(|v| v.max(0) as u64));
    let (oom, user, sys, peak) = (n.next()??, n.next()??, n.next()??, n.next()??);
    let usage = crate::usage::ResourceUsage {
        user_cpu: std::time::Duration::from_nanos(user),
        system_cpu: std::time::Duration::from_nanos(sys),
        peak_memory_bytes: peak,
        source: "cgroup",
    };
    Some((oom, usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: impl FnOnce(&mut DockerWorkerConfig)) -> DockerWorkerConfig {
        let mut c = DockerWorkerConfig { image: "busybox".into(), ..Default::default() };
        extra(&mut c);
        c
    }

    fn platform(p: &[(&str, &str)]) -> Properties {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_action_without_properties_gets_the_worker_defaults() {
        let c = cfg(|c| c.user = Some("1000:1000".into()));
        let spec = resolve(&platform(&[]), &c, "w").unwrap();
        assert_eq!(spec, Spec { image: "busybox".into(), network: NetworkMode::None, user: Some("1000:1000".into()) });
    }

    #[test]
    fn images_must_be_allowed() {
        let c = cfg(|c| c.allowed_images = Some(vec!["ubuntu:*".into()]));
        let ok = resolve(&platform(&[("container-image", "docker://ubuntu:22.04")]), &c, "w").unwrap();
        assert_eq!(ok.image, "ubuntu:22.04");
        let err = resolve(&platform(&[("container-image", "debian:12")]), &c, "w1").unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("'ubuntu:*'") && err.to_string().contains("w1"), "{err}");
        let only_default = cfg(|_| {});
        assert!(resolve(&platform(&[("container-image", "busybox")]), &only_default, "w").is_ok());
        assert!(resolve(&platform(&[("container-image", "other")]), &only_default, "w").is_err());
        let empty = resolve(&platform(&[("container-image", "docker://")]), &only_default, "w").unwrap_err();
        assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn network_never_exceeds_the_workers() {
        let closed = cfg(|_| {});
        let open = cfg(|c| c.network_mode = NetworkMode::Host);
        let want = |v: &str| platform(&[("dockerNetwork", v)]);
        assert_eq!(resolve(&want("bridge"), &closed, "w").unwrap().network, NetworkMode::None);
        assert_eq!(resolve(&want("bridge"), &open, "w").unwrap().network, NetworkMode::Bridge);
        assert_eq!(resolve(&want("off"), &open, "w").unwrap().network, NetworkMode::None);
        assert_eq!(resolve(&platform(&[]), &open, "w").unwrap().network, NetworkMode::Host);
        assert_eq!(resolve(&want("wifi"), &open, "w").unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn root_is_refused_when_the_worker_runs_as_someone_else() {
        let non_root = cfg(|c| c.user = Some("1000".into()));
        let root = platform(&[("dockerUser", "0:0")]);
        assert_eq!(resolve(&root, &non_root, "w").unwrap_err().code(), tonic::Code::PermissionDenied);
        let other = resolve(&platform(&[("dockerUser", "2000")]), &non_root, "w").unwrap();
        assert_eq!(other.user.as_deref(), Some("2000"));
        assert_eq!(resolve(&root, &cfg(|_| {}), "w").unwrap().user.as_deref(), Some("0:0"));
    }

    #[test]
    fn containers_get_the_configured_limits() {
        let c = cfg(|c| {
            c.cpu_limit = Some(1.5);
            c.memory_limit = Some(64 << 20);
        });
        let spec = resolve(&platform(&[]), &c, "w").unwrap();
        let h = host_config(&c, Some(Path::new("/w/mnt")), &spec, true);
        assert_eq!(h.binds, Some(vec!["/w/mnt:/re-server".to_string()]));
        assert_eq!((h.nano_cpus, h.memory, h.memory_swap), (Some(1_500_000_000), Some(64 << 20), Some(64 << 20)));
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(host_config(&c, None, &spec, false).binds, Some(vec![]), "archive mode mounts nothing");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything/at:all"));
        assert!(glob_match("ubuntu:22.04", "ubuntu:22.04"));
        assert!(!glob_match("ubuntu:22.04", "ubuntu:24.04"));
        assert!(glob_match("ubuntu:*", "ubuntu:24.04"));
        assert!(glob_match("gcr.io/proj/*", "gcr.io/proj/a/b:1"));
        assert!(!glob_match("gcr.io/proj/*", "gcr.io/other/a"));
        assert!(glob_match("*/busybox:*", "re-server-test/busybox:latest"));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn references() {
        assert_eq!(split_reference("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split_reference("ubuntu:22.04"), ("ubuntu".into(), "22.04".into()));
        assert_eq!(split_reference("localhost:5000/a/b"), ("localhost:5000/a/b".into(), "latest".into()));
        assert_eq!(split_reference("localhost:5000/a:1"), ("localhost:5000/a".into(), "1".into()));
        assert_eq!(split_reference("a@sha256:abc"), ("a".into(), "sha256:abc".into()));
    }

    #[test]
    fn the_warm_report_parses() {
        let (oom, u) = parse_report("2 1500000 500000 33554432").unwrap();
        assert_eq!(oom, 2);
        assert_eq!(u.user_cpu, std::time::Duration::from_micros(1500));
        assert_eq!(u.peak_memory_bytes, 32 << 20);
        assert!(parse_report("2 x").is_none());
        assert!(parse_report("").is_none());
    }

    #[test]
    fn oom_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_oom_kills(v1), Some(3));
        let v2 = "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\n";
        assert_eq!(parse_oom_kills(v2), Some(2));
        assert_eq!(parse_oom_kills(""), None);
    }

    #[test]
    fn hard_links_only_for_other_numeric_users() {
        assert!(!may_hard_link(None));
        assert!(!may_hard_link(Some("0:0")));
        assert!(!may_hard_link(Some("builder")));
        let me = unsafe { libc::geteuid() };
        assert!(!may_hard_link(Some(&me.to_string())));
        assert!(may_hard_link(Some(&format!("{}:5", me + 12345))));
    }

    #[test]
    fn roots() {
        assert!(is_root("root"));
        assert!(is_root("0:0"));
        assert!(!is_root("1000:1000"));
        assert!(!is_root("rooty"));
    }
}
