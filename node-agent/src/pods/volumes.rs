//! Pod volumes on the node, as kubelet lays them out under its root directory:
//! `<root>/pods/<uid>/volumes/<plugin>/<name>`, bind-mounted into containers through the
//! CRI's mounts.
//!
//! Served: `emptyDir` (a directory that lives as long as the pod; `medium: Memory` is a plain
//! directory too), `hostPath` (with `DirectoryOrCreate`/`FileOrCreate`), `configMap`,
//! `secret`, `downwardAPI` and `projected` (of those three). Files are written when a
//! container is about to start, with `items`, `defaultMode`/`mode` and `optional` honoured;
//! unlike kubelet they are not refreshed while the pod runs. Any other volume type is a
//! [`Error::Unsupported`], which the pod reports as its waiting reason instead of running
//! without the volume.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

use super::spec;

/// ConfigMaps and Secrets of the pod's namespace by name (`None`: not found).
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// ConfigMaps.
    pub config_maps: HashMap<String, Option<ConfigMap>>,
    /// Secrets.
    pub secrets: HashMap<String, Option<Secret>>,
}

/// Why a volume could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A volume type the agent does not serve.
    #[error("volume {name:?}: unsupported volume type (emptyDir, hostPath, configMap, secret, downwardAPI and projected are supported)")]
    Unsupported {
        /// The volume.
        name: String,
    },
    /// A referenced ConfigMap or Secret (or key) is missing and not optional.
    #[error("volume {volume:?}: {what}")]
    Missing {
        /// The volume.
        volume: String,
        /// What is missing.
        what: String,
    },
    /// A container mounts a volume the pod does not declare.
    #[error("container {container:?} mounts volume {volume:?}, which the pod does not define")]
    NoVolume {
        /// The container.
        container: String,
        /// The volume name.
        volume: String,
    },
    /// Filesystem trouble.
    #[error("volume {volume:?}: {path}: {source}")]
    Io {
        /// The volume.
        volume: String,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// `<root>/pods/<uid>`: everything the node keeps for a pod.
pub fn pod_dir(root: &Path, pod: &Pod) -> PathBuf {
    root.join("pods").join(spec::uid(pod))
}

/// The ConfigMaps and Secrets the pod's volumes read: (config maps, secrets).
pub fn references(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(c) = &v.config_map {
            cms.push(c.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.extend(s.secret_name.clone());
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &src.config_map {
                cms.push(c.name.clone());
            }
            if let Some(s) = &src.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

fn io(volume: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let volume = volume.to_string();
    let path = path.to_path_buf();
    move |source| Error::Io {
        volume,
        path,
        source,
    }
}

/// Sets up every volume of the pod; returns volume name → host path.
pub fn prepare(root: &Path, pod: &Pod, src: &Sources) -> Result<HashMap<String, PathBuf>, Error> {
    let mut out = HashMap::new();
    let base = pod_dir(root, pod).join("volumes");
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = prepare_one(&base, pod, v, src)?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

fn prepare_one(base: &Path, pod: &Pod, v: &Volume, src: &Sources) -> Result<PathBuf, Error> {
    let dir = |plugin: &str| base.join(plugin).join(&v.name);
    if v.empty_dir.is_some() {
        let d = dir("kubernetes.io~empty-dir");
        std::fs::create_dir_all(&d).map_err(io(&v.name, &d))?;
        // World-writable, as kubelet makes it: the container's user is unknown here.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))
            .map_err(io(&v.name, &d))?;
        return Ok(d);
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        match h.type_.as_deref() {
            Some("DirectoryOrCreate") => {
                std::fs::create_dir_all(&p).map_err(io(&v.name, &p))?;
            }
            Some("FileOrCreate") if !p.exists() => {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(io(&v.name, &p))?;
                }
                std::fs::write(&p, b"").map_err(io(&v.name, &p))?;
            }
            Some("Directory") if !p.is_dir() => {
                return Err(Error::Missing {
                    volume: v.name.clone(),
                    what: format!("hostPath type check failed: {} is not a directory", h.path),
                })
            }
            Some("File") if !p.is_file() => {
                return Err(Error::Missing {
                    volume: v.name.clone(),
                    what: format!("hostPath type check failed: {} is not a file", h.path),
                })
            }
            _ => {}
        }
        return Ok(p);
    }
    let mut files: Vec<(String, Vec<u8>, Option<i32>)> = Vec::new();
    let plugin;
    let default_mode;
    if let Some(c) = &v.config_map {
        plugin = "kubernetes.io~configmap";
        default_mode = c.default_mode;
        files.extend(config_map_files(
            &v.name,
            &c.name,
            c.items.as_deref(),
            c.optional == Some(true),
            src,
        )?);
    } else if let Some(s) = &v.secret {
        plugin = "kubernetes.io~secret";
        default_mode = s.default_mode;
        let name = s.secret_name.clone().unwrap_or_default();
        files.extend(secret_files(
            &v.name,
            &name,
            s.items.as_deref(),
            s.optional == Some(true),
            src,
        )?);
    } else if let Some(d) = &v.downward_api {
        plugin = "kubernetes.io~downward-api";
        default_mode = d.default_mode;
        files.extend(downward_files(pod, d.items.as_deref().unwrap_or_default()));
    } else if let Some(p) = &v.projected {
        plugin = "kubernetes.io~projected";
        default_mode = p.default_mode;
        for s in p.sources.iter().flatten() {
            if let Some(c) = &s.config_map {
                files.extend(config_map_files(
                    &v.name,
                    &c.name,
                    c.items.as_deref(),
                    c.optional == Some(true),
                    src,
                )?);
            } else if let Some(x) = &s.secret {
                files.extend(secret_files(
                    &v.name,
                    &x.name,
                    x.items.as_deref(),
                    x.optional == Some(true),
                    src,
                )?);
            } else if let Some(d) = &s.downward_api {
                files.extend(downward_files(pod, d.items.as_deref().unwrap_or_default()));
            } else {
                return Err(Error::Unsupported {
                    name: v.name.clone(),
                });
            }
        }
    } else {
        return Err(Error::Unsupported {
            name: v.name.clone(),
        });
    }
    let d = dir(plugin);
    std::fs::create_dir_all(&d).map_err(io(&v.name, &d))?;
    for (rel, data, mode) in files {
        let p = d.join(rel.trim_start_matches('/'));
        if !p.starts_with(&d) || rel.split('/').any(|c| c == "..") {
            return Err(Error::Missing {
                volume: v.name.clone(),
                what: format!("invalid path {rel:?}"),
            });
        }
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io(&v.name, &p))?;
        }
        std::fs::write(&p, &data).map_err(io(&v.name, &p))?;
        let mode = mode.or(default_mode).unwrap_or(0o644) as u32 & 0o777;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(io(&v.name, &p))?;
    }
    Ok(d)
}

type File = (String, Vec<u8>, Option<i32>);

/// The files of a ConfigMap or Secret (`data`: `None` when it does not exist): every key,
/// or the listed `items`; a missing source or key is an error unless `optional`.
fn select(
    volume: &str,
    kind: &str,
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
) -> Result<Vec<File>, Error> {
    let Some(data) = data else {
        if optional {
            return Ok(Vec::new());
        }
        return Err(Error::Missing {
            volume: volume.to_string(),
            what: format!("{kind} \"{name}\" not found"),
        });
    };
    match items {
        None => Ok(data.into_iter().map(|(k, v)| (k, v, None)).collect()),
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                match data.get(&it.key) {
                    Some(v) => out.push((it.path.clone(), v.clone(), it.mode)),
                    None if optional => {}
                    None => {
                        return Err(Error::Missing {
                            volume: volume.to_string(),
                            what: format!(
                                "configuration of {kind} {name:?} has no key {:?}",
                                it.key
                            ),
                        })
                    }
                }
            }
            Ok(out)
        }
    }
}

fn config_map_files(
    volume: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    src: &Sources,
) -> Result<Vec<File>, Error> {
    let data = src.config_maps.get(name).cloned().flatten().map(|cm| {
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.unwrap_or_default() {
            data.insert(k, v.0);
        }
        data
    });
    select(volume, "configmap", name, data, items, optional)
}

fn secret_files(
    volume: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    src: &Sources,
) -> Result<Vec<File>, Error> {
    let data = src.secrets.get(name).cloned().flatten().map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    });
    select(volume, "secret", name, data, items, optional)
}

/// The downward API's files: a field per file (labels and annotations as `key="value"`
/// lines, sorted, as kubelet formats them).
fn downward_files(pod: &Pod, items: &[DownwardAPIVolumeFile]) -> Vec<File> {
    let map_lines = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    items
        .iter()
        .filter_map(|it| {
            let f = it.field_ref.as_ref()?;
            let v = match f.field_path.as_str() {
                "metadata.labels" => map_lines(&pod.metadata.labels),
                "metadata.annotations" => map_lines(&pod.metadata.annotations),
                "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                "metadata.namespace" => spec::ns(pod).to_string(),
                "metadata.uid" => spec::uid(pod).to_string(),
                _ => return None,
            };
            Some((it.path.clone(), v.into_bytes(), it.mode))
        })
        .collect()
}

/// A container's mounts from its `volumeMounts` (with `subPath`), given the prepared volumes.
pub fn mounts(c: &Container, volumes: &HashMap<String, PathBuf>) -> Result<Vec<cri::Mount>, Error> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(host) = volumes.get(&m.name) else {
            return Err(Error::NoVolume {
                container: c.name.clone(),
                volume: m.name.clone(),
            });
        };
        let mut host = host.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.split('/').any(|c| c == "..") || sub.starts_with('/') {
                return Err(Error::Missing {
                    volume: m.name.clone(),
                    what: format!("invalid subPath {sub:?}"),
                });
            }
            host = host.join(sub);
            if !host.exists() {
                std::fs::create_dir_all(&host).map_err(io(&m.name, &host))?;
            }
        }
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m.read_only == Some(true),
            ..Default::default()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u1",
                          "labels": {"app": "web", "b": "2"}},
            "spec": {
                "containers": [{"name": "a", "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true},
                    {"name": "all", "mountPath": "/all", "subPath": "sub"}
                ]}],
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "cfg", "configMap": {"name": "cm", "items": [{"key": "a", "path": "dir/a.txt", "mode": 0o600}]}},
                    {"name": "all", "projected": {"defaultMode": 0o640, "sources": [
                        {"configMap": {"name": "cm"}},
                        {"secret": {"name": "s"}},
                        {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}
                    ]}}
                ]
            }
        }))
        .unwrap()
    }

    fn sources() -> Sources {
        let cm: ConfigMap =
            serde_json::from_value(json!({"data": {"a": "alpha", "b": "beta"}})).unwrap();
        let s: Secret = serde_json::from_value(json!({"data": {"pw": "aHVudGVyMg=="}})).unwrap();
        Sources {
            config_maps: [("cm".to_string(), Some(cm))].into(),
            secrets: [("s".to_string(), Some(s))].into(),
        }
    }

    #[test]
    fn lays_out_files_and_mounts() {
        let d = tempfile::tempdir().unwrap();
        let p = pod();
        let vols = prepare(d.path(), &p, &sources()).unwrap();
        let base = d.path().join("pods/u1/volumes");
        assert_eq!(
            vols["scratch"],
            base.join("kubernetes.io~empty-dir/scratch")
        );
        let cfg = &vols["cfg"];
        assert_eq!(
            std::fs::read_to_string(cfg.join("dir/a.txt")).unwrap(),
            "alpha"
        );
        assert!(!cfg.join("b").exists(), "only the listed items");
        let mode = std::fs::metadata(cfg.join("dir/a.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let all = &vols["all"];
        assert_eq!(std::fs::read_to_string(all.join("pw")).unwrap(), "hunter2");
        assert_eq!(std::fs::read_to_string(all.join("b")).unwrap(), "beta");
        assert_eq!(
            std::fs::read_to_string(all.join("labels")).unwrap(),
            "app=\"web\"\nb=\"2\""
        );
        let mode = std::fs::metadata(all.join("pw"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);

        let c = &p.spec.as_ref().unwrap().containers[0];
        let m = mounts(c, &vols).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].container_path, "/etc/cfg");
        assert!(m[1].readonly);
        assert_eq!(m[2].host_path, all.join("sub").to_string_lossy());
        assert!(all.join("sub").is_dir());
        assert_eq!(
            references(&p),
            (vec!["cm".to_string()], vec!["s".to_string()])
        );
    }

    #[test]
    fn missing_and_unsupported_volumes_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let mut p = pod();
        let mut src = sources();
        src.config_maps.insert("cm".into(), None);
        let e = prepare(d.path(), &p, &src).unwrap_err().to_string();
        assert!(e.contains("configmap \"cm\" not found"), "{e}");
        p.spec.as_mut().unwrap().volumes = Some(vec![serde_json::from_value(
            json!({"name": "data", "persistentVolumeClaim": {"claimName": "x"}}),
        )
        .unwrap()]);
        let e = prepare(d.path(), &p, &sources()).unwrap_err().to_string();
        assert!(e.contains("unsupported volume type"), "{e}");
        let c = &pod().spec.unwrap().containers[0];
        let e = mounts(c, &HashMap::new()).unwrap_err().to_string();
        assert!(e.contains("does not define"), "{e}");
    }
}
