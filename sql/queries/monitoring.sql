-- Monitoring (sql/migrations/0006_monitoring.sql): the numbers, the thresholds and the alerts' state. The n8n
-- monitor-alerts workflow runs `SELECT * FROM comfyq_alert_transitions()` itself; these are for Python.

-- name: monitoring_snapshot
SELECT * FROM comfyq_monitoring;

-- name: monitor_thresholds
SELECT name, value, description, updated_at FROM monitor_thresholds ORDER BY name;

-- name: monitor_threshold_set
UPDATE monitor_thresholds SET value = %(value)s, updated_at = now() WHERE name = %(name)s
RETURNING name, value, description, updated_at;

-- name: alert_transitions
SELECT * FROM comfyq_alert_transitions();

-- name: alert_states
SELECT alert, active, value, threshold, active_since, last_notified_at, notifications, resolved_at, checked_at
FROM monitor_alert_state ORDER BY alert;
