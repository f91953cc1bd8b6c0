-- Version 5: agents an admin approved, and what they may claim.

-- An agent whose Hello claims labels outside labels, or more than slots
-- slots (0: any), or presents another certificate than cert_sha256 (when
-- set), waits in pending approval and gets no work. Rows are
-- written only by an admin's approve and removed by a revoke.
CREATE TABLE agent_approvals (
    name        TEXT    PRIMARY KEY CHECK (name <> ''),
    labels      TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
    slots       INTEGER NOT NULL CHECK (slots >= 0),
    cert_sha256 TEXT    NOT NULL DEFAULT '',
    approved_by TEXT    NOT NULL DEFAULT '',
    approved_at INTEGER NOT NULL
) WITHOUT ROWID;
