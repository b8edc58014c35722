//! The Pod printer: Ready, Status (the aggregate reason), Restarts and the
//! wide columns, following `printPod` in kube-apiserver.

use std::collections::HashSet;

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::duration::since;
use crate::json::{arr_at, bool_at, get, int_at, obj, opt_str, str_at, time_at};
use crate::Printed;

/// Reason the node lifecycle controller sets on pods of an unreachable node.
const NODE_UNREACHABLE_REASON: &str = "NodeLost";

/// Keeps the latest of two optional timestamps in `latest`.
fn bump(latest: &mut Option<Timestamp>, candidate: Option<Timestamp>) {
    if let Some(c) = candidate {
        if latest.is_none_or(|l| l < c) {
            *latest = Some(c);
        }
    }
}

/// `lastState.terminated.finishedAt` of a container status, when set.
fn last_finished(status: &Value) -> Option<Timestamp> {
    obj(status, &["lastState", "terminated"]).and_then(|t| time_at(t, &["finishedAt"]))
}

/// The reason text for a terminated state without a reason:
/// `Signal:N` when a signal is recorded, else `ExitCode:N`.
fn exit_text(terminated: &Value) -> String {
    match int_at(terminated, &["signal"]).filter(|s| *s != 0) {
        Some(signal) => format!("Signal:{signal}"),
        None => format!(
            "ExitCode:{}",
            int_at(terminated, &["exitCode"]).unwrap_or(0)
        ),
    }
}

fn condition_true(conditions: &[Value], ty: &str) -> bool {
    conditions
        .iter()
        .any(|c| str_at(c, &["type"]) == ty && str_at(c, &["status"]) == "True")
}

/// Builds the Pod row cells (always including the wide ones) and the row
/// conditions (`Completed` for Succeeded and Failed pods).
pub(crate) fn print(pod: &Value, now: Timestamp) -> Printed {
    let containers = arr_at(pod, &["spec", "containers"]);
    let init_specs = arr_at(pod, &["spec", "initContainers"]);
    let conditions = arr_at(pod, &["status", "conditions"]);
    let init_statuses = arr_at(pod, &["status", "initContainerStatuses"]);
    let statuses = arr_at(pod, &["status", "containerStatuses"]);
    let phase = str_at(pod, &["status", "phase"]);
    let status_reason = str_at(pod, &["status", "reason"]);

    let mut reason = if status_reason.is_empty() {
        phase.to_string()
    } else {
        status_reason.to_string()
    };
    if conditions.iter().any(|c| {
        str_at(c, &["type"]) == "PodScheduled" && str_at(c, &["reason"]) == "SchedulingGated"
    }) {
        reason = "SchedulingGated".to_string();
    }

    let row_conditions = match phase {
        "Succeeded" => vec![json!({
            "type": "Completed",
            "status": "True",
            "reason": "Succeeded",
            "message": "The pod has completed successfully.",
        })],
        "Failed" => vec![json!({
            "type": "Completed",
            "status": "True",
            "reason": "Failed",
            "message": "The pod failed.",
        })],
        _ => Vec::new(),
    };

    // Sidecars: init containers with restartPolicy Always count as containers.
    let sidecars: HashSet<&str> = init_specs
        .iter()
        .filter(|c| str_at(c, &["restartPolicy"]) == "Always")
        .map(|c| str_at(c, &["name"]))
        .collect();
    let total = containers.len()
        + init_specs
            .iter()
            .filter(|c| str_at(c, &["restartPolicy"]) == "Always")
            .count();

    let mut ready = 0usize;
    let mut restarts: i64 = 0;
    let mut sidecar_restarts: i64 = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_sidecar_restart: Option<Timestamp> = None;

    let mut initializing = false;
    for (i, cs) in init_statuses.iter().enumerate() {
        let count = int_at(cs, &["restartCount"]).unwrap_or(0);
        let finished = last_finished(cs);
        restarts += count;
        bump(&mut last_restart, finished);
        let is_sidecar = sidecars.contains(str_at(cs, &["name"]));
        if is_sidecar {
            sidecar_restarts += count;
            bump(&mut last_sidecar_restart, finished);
        }

        let terminated = obj(cs, &["state", "terminated"]);
        let waiting_reason = obj(cs, &["state", "waiting"])
            .map(|w| str_at(w, &["reason"]))
            .unwrap_or("");
        if let Some(t) = terminated {
            if int_at(t, &["exitCode"]).unwrap_or(0) == 0 {
                continue;
            }
        }
        if is_sidecar && bool_at(cs, &["started"]) {
            if bool_at(cs, &["ready"]) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let t_reason = str_at(t, &["reason"]);
            reason = if t_reason.is_empty() {
                format!("Init:{}", exit_text(t))
            } else {
                format!("Init:{t_reason}")
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_true(conditions, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for cs in statuses.iter().rev() {
            restarts += int_at(cs, &["restartCount"]).unwrap_or(0);
            bump(&mut last_restart, last_finished(cs));

            let waiting_reason = obj(cs, &["state", "waiting"])
                .map(|w| str_at(w, &["reason"]))
                .unwrap_or("");
            let terminated = obj(cs, &["state", "terminated"]);
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                let t_reason = str_at(t, &["reason"]);
                reason = if t_reason.is_empty() {
                    exit_text(t)
                } else {
                    t_reason.to_string()
                };
            } else if bool_at(cs, &["ready"]) && obj(cs, &["state", "running"]).is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(conditions, "Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    let deleting = get(pod, &["metadata", "deletionTimestamp"]).is_some();
    if deleting && status_reason == NODE_UNREACHABLE_REASON {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    let restarts_text = match last_restart {
        Some(last) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(last), now)),
        _ => restarts.to_string(),
    };

    // Wide columns.
    let pod_ip = arr_at(pod, &["status", "podIPs"])
        .first()
        .map(|p| str_at(p, &["ip"]))
        .or_else(|| opt_str(pod, &["status", "podIP"]))
        .filter(|ip| !ip.is_empty())
        .unwrap_or("<none>");
    let node_name = none_if_empty(str_at(pod, &["spec", "nodeName"]));
    let nominated = none_if_empty(str_at(pod, &["status", "nominatedNodeName"]));
    let gates = arr_at(pod, &["spec", "readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_gates = gates
            .iter()
            .filter(|g| {
                let ty = str_at(g, &["conditionType"]);
                conditions
                    .iter()
                    .find(|c| str_at(c, &["type"]) == ty)
                    .is_some_and(|c| str_at(c, &["status"]) == "True")
            })
            .count();
        format!("{true_gates}/{}", gates.len())
    };

    Printed {
        cells: vec![
            json!(str_at(pod, &["metadata", "name"])),
            json!(format!("{ready}/{total}")),
            json!(reason),
            json!(restarts_text),
            json!(since(time_at(pod, &["metadata", "creationTimestamp"]), now)),
            json!(pod_ip),
            json!(node_name),
            json!(nominated),
            json!(readiness_gates),
        ],
        conditions: row_conditions,
    }
}

fn none_if_empty(s: &str) -> &str {
    if s.is_empty() {
        "<none>"
    } else {
        s
    }
}
