//! The thin CRI layer: a gRPC channel over containerd's unix socket, the two CRI services, and
//! image import (CRI has no import call, so that one runs `ctr`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Labels the agent puts on every sandbox and container (kubelet's names), so that after a
/// restart it finds what it made and nothing else.
pub mod labels {
    /// The pod's UID.
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    /// The pod's name.
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    /// The pod's namespace.
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    /// The container's name in the pod spec.
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// Marks objects made by sluice-agent (kubelet marks sandboxes `io.kubernetes.docker.type`;
    /// ours is explicit so that a runtime shared with other clients is safe to garbage-collect).
    pub const MANAGED_BY: &str = "sluice.dev/managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGER: &str = "sluice-agent";
    /// Annotation: the container's restart count when it was created.
    pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
    /// Annotation: hash of the container's spec; a changed spec (a new image) replaces it.
    pub const SPEC_HASH: &str = "io.kubernetes.container.hash";
    /// Annotation: the pod's termination grace period, for stops after a restart of the agent.
    pub const GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";
}

/// Errors of the CRI layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not a unix socket.
    #[error("container runtime endpoint {0:?}: only unix sockets are supported (unix:///path)")]
    Endpoint(String),
    /// Connecting failed.
    #[error("connecting to the container runtime at {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// `ctr` failed or is missing.
    #[error("importing {file}: {message}")]
    Import {
        /// The tarball.
        file: PathBuf,
        /// What ctr said.
        message: String,
    },
}

/// The socket path of `unix:///path` or a bare path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, Error> {
    if let Some(p) = endpoint.strip_prefix("unix://") {
        return Ok(PathBuf::from(p));
    }
    if endpoint.starts_with('/') {
        return Ok(PathBuf::from(endpoint));
    }
    Err(Error::Endpoint(endpoint.to_string()))
}

/// Both CRI services over one channel. Cheap to clone.
#[derive(Clone)]
pub struct Cri {
    /// RuntimeService.
    pub rt: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub img: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the runtime's unix socket (lazily: the first call dials, and a restarted
    /// runtime is dialled again).
    pub async fn connect(endpoint: &str) -> Result<Cri, Error> {
        let path = socket_path(endpoint)?;
        let p = path.clone();
        let ch = Endpoint::try_from("http://[::]")
            .expect("a literal URI")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }));
        Ok(Cri {
            rt: RuntimeServiceClient::new(ch.clone()),
            img: ImageServiceClient::new(ch),
        })
    }

    /// `runtime_name runtime_version`, e.g. `containerd 1.6.20~ds1`.
    pub async fn version(&self) -> Result<String, tonic::Status> {
        let v = self
            .rt
            .clone()
            .version(cri::VersionRequest::default())
            .await?
            .into_inner();
        Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
    }

    /// The images the runtime holds.
    pub async fn images(&self) -> Result<Vec<cri::Image>, tonic::Status> {
        Ok(self
            .img
            .clone()
            .list_images(cri::ListImagesRequest::default())
            .await?
            .into_inner()
            .images)
    }

    /// Sandboxes made by this agent.
    pub async fn sandboxes(&self) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
        let filter = cri::PodSandboxFilter {
            label_selector: [(labels::MANAGED_BY.to_string(), labels::MANAGER.to_string())].into(),
            ..Default::default()
        };
        Ok(self
            .rt
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await?
            .into_inner()
            .items)
    }

    /// Containers of a pod (by UID), in every sandbox it had.
    pub async fn pod_containers(&self, uid: &str) -> Result<Vec<cri::Container>, tonic::Status> {
        let filter = cri::ContainerFilter {
            label_selector: [(labels::POD_UID.to_string(), uid.to_string())].into(),
            ..Default::default()
        };
        Ok(self
            .rt
            .clone()
            .list_containers(cri::ListContainersRequest {
                filter: Some(filter),
            })
            .await?
            .into_inner()
            .containers)
    }

    /// One container's status (`None` when the runtime no longer knows it).
    pub async fn container_status(
        &self,
        id: &str,
    ) -> Result<Option<cri::ContainerStatus>, tonic::Status> {
        match self
            .rt
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().status),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// One sandbox's status (`None` when gone).
    pub async fn sandbox_status(
        &self,
        id: &str,
    ) -> Result<Option<cri::PodSandboxStatus>, tonic::Status> {
        match self
            .rt
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().status),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// Stops (if needed) and removes a sandbox; a missing one is success.
    pub async fn remove_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        let mut rt = self.rt.clone();
        let ok = |r: Result<(), tonic::Status>| match r {
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            r => r,
        };
        ok(rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .map(|_| ()))?;
        ok(rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .map(|_| ()))
    }

    /// Stops a container: the stop signal, then SIGKILL after `grace` seconds (the runtime
    /// does both). A missing container is success.
    pub async fn stop_container(&self, id: &str, grace: i64) -> Result<(), tonic::Status> {
        match self
            .rt
            .clone()
            .stop_container(cri::StopContainerRequest {
                container_id: id.to_string(),
                timeout: grace.max(0),
            })
            .await
        {
            Err(s) if s.code() != tonic::Code::NotFound => Err(s),
            _ => Ok(()),
        }
    }

    /// Removes a container; a missing one is success.
    pub async fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        match self
            .rt
            .clone()
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
        {
            Err(s) if s.code() != tonic::Code::NotFound => Err(s),
            _ => Ok(()),
        }
    }

    /// The local image `image` names, if the runtime has it.
    pub async fn image_status(&self, image: &str) -> Result<Option<cri::Image>, tonic::Status> {
        Ok(self
            .img
            .clone()
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?
            .into_inner()
            .image)
    }

    /// Pulls an image; returns its reference. Bounded by `timeout`: no registry may be
    /// reachable, and a pull must fail, not hang.
    pub async fn pull(&self, image: &str, timeout: Duration) -> Result<String, tonic::Status> {
        let mut img = self.img.clone();
        let call = img.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        });
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => Ok(r?.into_inner().image_ref),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "pulling {image} took longer than {timeout:?}"
            ))),
        }
    }

    /// Runs a command in a container and waits for it (exec probes, preStop hooks).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let mut rt = self.rt.clone();
        let call = rt.exec_sync(cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd,
            timeout: timeout.as_secs().max(1) as i64,
        });
        // The runtime enforces the timeout too; ours covers a runtime that does not answer.
        match tokio::time::timeout(timeout + Duration::from_secs(2), call).await {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(tonic::Status::deadline_exceeded("exec timed out")),
        }
    }
}

/// Imports OCI image tarballs into the runtime's `k8s.io` namespace with `ctr images import`
/// (containerd's own client; the CRI has no import).
pub fn import_images(endpoint: &str, files: &[PathBuf]) -> Result<Vec<String>, Error> {
    let sock = socket_path(endpoint)?;
    let mut out = Vec::new();
    for f in files {
        out.push(import_one(&sock, f)?);
    }
    Ok(out)
}

fn import_one(sock: &Path, file: &Path) -> Result<String, Error> {
    let o = std::process::Command::new("ctr")
        .arg("--address")
        .arg(sock)
        .args(["--namespace", "k8s.io", "images", "import"])
        .arg(file)
        .output()
        .map_err(|e| Error::Import {
            file: file.to_path_buf(),
            message: format!("running ctr (Debian package containerd): {e}"),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        return Err(Error::Import {
            file: file.to_path_buf(),
            message: text.trim().to_string(),
        });
    }
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(socket_path("/x.sock").unwrap(), PathBuf::from("/x.sock"));
        assert!(matches!(
            socket_path("tcp://1.2.3.4:1"),
            Err(Error::Endpoint(_))
        ));
    }
}
