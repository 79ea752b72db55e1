// The CLI's operations for the HTTP API (issue 20): each method is what
// the matching `tern` subcommand does with `--format json` (the same store
// functions, the same JSON forms); only the arguments arrive differently,
// checked here into APIFailure (400) instead of a CLI exit.

import Foundation
import TernHTTP
import TernProtocol
import TernScheduler
import TernStore

struct CLIOperations: AdminOperations {
    let store: Store
    let settings: TernSettings
    /// Runs after a queue action that may make mail due (the running scheduler's wake-up).
    let onQueueChange: @Sendable () -> Void

    func window(since: String?, until: String?, defaultSince: String?) throws -> TimeWindow? {
        do {
            return try TimeArgument.checkedWindow(since: since, until: until, defaultSince: defaultSince, now: nowMillis())
        } catch {
            switch error {
            case .bad(let option, let text): throw APIFailure(400, TimeArgument.badTime(text), field: option)
            case .untilNotAfterSince: throw APIFailure(400, "until must be after since", field: "until")
            }
        }
    }

    func queueList(state: RecipientState?, domain: String?, limit: Int, offset: Int) throws -> APIPage {
        let entries = try store.queueEntries(QueueFilter(state: state, domain: domain, limit: limit, offset: offset))
        return APIPage(json: QueueFormatter.json(entries), count: entries.count)
    }

    func queueShow(queueID: String) throws -> String? {
        try store.messageDetail(queueID: queueID).map(QueueFormatter.detailJSON)
    }

    func queueAction(_ action: QueueAction, _ selector: QueueSelector) async throws -> String {
        let admin = QueueAdmin(store: store, hostname: settings.hostname)
        let now = nowMillis()
        let result: AdminResult
        let verb: EventKind
        switch action {
        case .hold: (result, verb) = (try await admin.hold(selector, now: now), .held)
        case .release: (result, verb) = (try await admin.release(selector, now: now), .released)
        case .flush: (result, verb) = (try await admin.flush(selector, now: now), .flushed)
        case .delete: (result, verb) = (try await admin.delete(selector, now: now), .deleted)
        case .bounce: (result, verb) = (try await admin.bounce(selector, now: now), .bounced)
        }
        if result.changed == 0 && result.inflight == 0, case .queueID(let q) = selector, try store.messageDetail(queueID: q) == nil {
            throw APIFailure(404, "no message with queue id \(q)", field: "queue_id")
        }
        if result.changed > 0 { onQueueChange() }
        return QueueFormatter.actionJSON(verb.rawValue, result)
    }

    func history(_ filter: HistoryFilter, since: String?, until: String?) throws -> APIPage {
        var f = filter
        f.headerMessageID = f.headerMessageID.map(History.bareMessageID)
        f.window = try window(since: since, until: until, defaultSince: nil)
        let entries = try store.history(f)
        return APIPage(json: HistoryFormatter.json(entries), count: entries.count)
    }

    func statsRoutes(since: String?, until: String?, limit: Int) throws -> String {
        let w = try window(since: since, until: until, defaultSince: "24h")!
        return try Stats.Routes.report(store, settings, window: w, now: nowMillis(), limit: limit, format: .json)
    }

    func statsQueue(limit: Int) throws -> String {
        StatsFormatter.queue(try store.queueShape(now: nowMillis(), limit: limit), format: .json)
    }

    func statsRecipients(since: String?, until: String?, top: Int) throws -> String {
        let w = try window(since: since, until: until, defaultSince: "30d")!
        return try Stats.Recipients.report(store, settings, window: w, top: top, format: .json)
    }

    func suppressionList(search: String?, limit: Int, offset: Int) throws -> APIPage {
        let entries = try store.suppressions(containing: search, limit: limit, offset: offset)
        return APIPage(json: SuppressionFormatter.render(entries, format: .json), count: entries.count)
    }

    func suppressionAdd(_ addresses: [String], reason: String, expires: String?) async throws -> String {
        let now = nowMillis()
        var expiry: Int64? = nil
        if let expires {
            guard let t = expiryValue(expires, now: now) else { throw APIFailure(400, TimeArgument.badTime(expires), field: "expires") }
            expiry = t
        }
        var entries: [Suppression] = []
        for (i, a) in addresses.enumerated() {
            guard let c = AddressParser.canonical(a) else { throw APIFailure(400, "bad address '\(a)'", field: "addresses[\(i)]") }
            entries.append(Suppression(address: c, reason: reason, source: "manual", createdAt: now, expiresAt: expiry))
        }
        let added = try await store.addSuppressions(entries)
        return JSON.object([("added", .int(entries.count)), ("new", .int(added))]).text
    }

    func suppressionRemove(_ addresses: [String]) async throws -> Int {
        try await store.removeSuppressions(addresses.map { AddressParser.canonical($0) ?? $0 })
    }
}
