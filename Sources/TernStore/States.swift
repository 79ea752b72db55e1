// The closed vocabularies of the queue: recipient states, attempt outcomes
// and event kinds. The schema spells the same sets in its CHECK constraints
// (migrations 0001, 0006 and 0009); StoreTests compares the two, so a value
// added here without a migration fails a test, and a typo does not compile.
// SQL that names a value interpolates it (`\(RecipientState.inflight.sql)`).

import GRDB

/// Where a recipient is in its life (`recipient.state`).
public enum RecipientState: String, CaseIterable, Sendable, Codable, DatabaseValueConvertible {
    /// Accepted, never tried, due at `next_attempt_at`.
    case queued
    /// Claimed by a delivery worker (`lease_owner`, `lease_expires_at` set).
    case inflight
    /// Tried and deferred; due again at `next_attempt_at`.
    case deferred
    /// Put aside by an operator (`tern queue hold`).
    case held
    case delivered
    case bounced
    /// Deferred until the queue lifetime ran out.
    case expired
    /// Not sent: the address is on the suppression list.
    case suppressed

    /// The value as an SQL string literal.
    public var sql: String { "'\(rawValue)'" }

    /// A final state: `final_at` is set, nothing more happens to the recipient.
    public var isFinal: Bool {
        switch self {
        case .delivered, .bounced, .expired, .suppressed: return true
        case .queued, .inflight, .deferred, .held: return false
        }
    }

    /// The state a recipient goes back to when it is given back or released
    /// untried: `deferred` once it has been tried, else `queued`.
    public static func waiting(attempts: Int) -> RecipientState { attempts > 0 ? .deferred : .queued }
}

/// How one delivery attempt ended (`attempt.outcome`).
public enum AttemptOutcome: String, CaseIterable, Sendable, Codable, DatabaseValueConvertible {
    case delivered, deferred, bounced

    public var sql: String { "'\(rawValue)'" }
}

/// What an `event` row records (`event.kind`).
public enum EventKind: String, CaseIterable, Sendable, Codable, DatabaseValueConvertible {
    /// A message was accepted (one per message, no recipient).
    case received
    case delivered, deferred, bounced, expired, suppressed
    /// Operator actions.
    case held, released, flushed, deleted
    /// A lease ran out and the recipient became claimable again.
    case leaseExpired = "lease_expired"
    /// An outcome arrived after another process had taken the lease over; not applied.
    case leaseLost = "lease_lost"
    /// A DSN was queued about the message.
    case dsnQueued = "dsn_queued"
    /// A hard bounce put the address on the suppression list.
    case suppressionAdded = "suppression_added"
    /// Events that belong to no message.
    case authFailed = "auth_failed"
    case authBlocked = "auth_blocked"
    /// Traffic shaping changed a destination's state (no message; the
    /// destination is in the detail).
    case shapingThrottled = "shaping_throttled"
    case shapingSuspended = "shaping_suspended"
    case shapingRamped = "shaping_ramped"
    case shapingResumed = "shaping_resumed"
    case shapingPaused = "shaping_paused"
    case shapingSet = "shaping_set"
    /// A source could not be bound (out of rotation) or can again (no
    /// message; source and address in the detail).
    case sourceUnavailable = "source_unavailable"
    case sourceAvailable = "source_available"
    /// A source's warm-up plan: operators' commands and each day's verdict.
    case warmupStarted = "warmup_started"
    case warmupPaused = "warmup_paused"
    case warmupResumed = "warmup_resumed"
    case warmupSkipped = "warmup_skipped"
    case warmupAdvanced = "warmup_advanced"
    case warmupHeld = "warmup_held"
    case warmupSteppedBack = "warmup_stepped_back"
    case warmupDone = "warmup_done"
    /// A DNS blocklist started or stopped listing a source (zone, return code, reason in the detail).
    case blocklistListed = "blocklist_listed"
    case blocklistDelisted = "blocklist_delisted"

    public var sql: String { "'\(rawValue)'" }

    /// The event written with a transition into `state`.
    public init(_ state: RecipientState) {
        switch state {
        case .delivered: self = .delivered
        case .deferred: self = .deferred
        case .bounced: self = .bounced
        case .expired: self = .expired
        case .suppressed: self = .suppressed
        case .held: self = .held
        case .queued, .inflight: self = .released
        }
    }
}

extension Sequence where Element: RawRepresentable, Element.RawValue == String {
    /// `(column = 'a' OR column = 'b' …)`: the form the partial indexes and
    /// CHECKs use (an IN list costs an ephemeral table per row written; see
    /// migration 0006).
    func orChain(_ column: String) -> String {
        "(" + map { "\(column) = '\($0.rawValue)'" }.joined(separator: " OR ") + ")"
    }
}
