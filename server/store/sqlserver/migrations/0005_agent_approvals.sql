-- Version 5: agents an admin approved, and what they may claim. Same
-- version number as the SQLite backend's.

-- An agent whose Hello claims labels outside labels, or more than slots
-- slots (0: any), or presents another certificate than cert_sha256 (when
-- set), waits in pending approval and gets no work. Rows are
-- written only by an admin's approve and removed by a revoke. A new table:
-- online.
CREATE TABLE {{schema}}.agent_approvals (
    name        NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT PK_agent_approvals PRIMARY KEY CLUSTERED,
    labels      NVARCHAR(MAX) NOT NULL CONSTRAINT DF_agent_approvals_labels DEFAULT N'{}',
    slots       INT NOT NULL,
    cert_sha256 NVARCHAR(64) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT DF_agent_approvals_cert DEFAULT N'',
    approved_by NVARCHAR(400) NOT NULL CONSTRAINT DF_agent_approvals_by DEFAULT N'',
    approved_at DATETIME2(3) NOT NULL,
    CONSTRAINT CK_agent_approvals_name CHECK (name <> N''),
    CONSTRAINT CK_agent_approvals_labels CHECK (ISJSON(labels) = 1),
    CONSTRAINT CK_agent_approvals_slots CHECK (slots >= 0)
);
GO
