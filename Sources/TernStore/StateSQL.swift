// Recipient state sets as SQL conditions, written exactly as the partial
// indexes' WHERE clauses (migration 0006). SQLite uses a partial index only
// when the query's WHERE contains the index's condition as written: an
// equivalent `state IN (…)` would scan instead. OR chains, not IN lists:
// SQLite builds an ephemeral table for an IN list each time a row is written.

public enum StateSQL {
    /// Due or waiting for a retry: `recipient_claim`.
    public static let claimable = [RecipientState.queued, .deferred].orChain("state")
    /// Not final yet: `recipient_live`. The claimable pair comes last on
    /// purpose: SQLite parses `a OR b OR c OR d` as `((a OR b) OR c) OR d`,
    /// and a query whose WHERE matched a sub-term, as `claimable` would at
    /// the front, could take this index instead of `recipient_claim`.
    public static let live = [RecipientState.inflight, .held, .queued, .deferred].orChain("state")
    /// Failed for good: `recipient_failed`.
    public static let failed = [RecipientState.bounced, .expired].orChain("state")
    /// Final: `final_at` is set.
    public static let final = RecipientState.allCases.filter(\.isFinal).orChain("state")
}
