// `tern warmup status|start|pause|resume|skip-to`, `tern blocklist check`
// and `tern stats sources` (issue 19). Warm-up commands write the plan's
// row with a new operator version and an event in one transaction; a
// running `tern serve` applies it within a second. `blocklist check` looks
// the sources up now through the configured resolver and records what
// changed, as the server's own checks do.

import ArgumentParser
import Foundation
import TernMailAuth
import TernRouting
import TernScheduler
import TernStore

struct WarmupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warmup",
        abstract: "Show and steer the warm-up of source addresses.",
        discussion: """
            A [[source]] with `warmup = "PLAN"` sends each destination (a provider such as google, or a domain) at most \
            its plan day's cap, spread over the day. Each day's results decide the next: it advances when healthy, \
            holds on too many deferrals, and steps back a day on block replies or hard bounces. Mail over a cap goes \
            from the pool's other sources or waits; it is never bounced. docs/warmup.md explains it all.
            """,
        subcommands: [Status.self, Start.self, Pause.self, Resume.self, SkipTo.self])

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Each warming source's day, caps, what it sent and how it went per destination, and why the plan held.")
        @OptionGroup var common: DatabaseOptions
        @Option(help: "Only this source.") var source: String?
        @Option(help: "table or json.") var format: ReportFormat = .table

        func run() async throws {
            let (store, settings) = try openExisting(common)
            defer { store.close() }
            let view: WarmupView
            do { view = try WarmupView.load(store, settings, now: nowMillis(), only: source) } catch let e as ExitCode { throw e } catch {
                throw fail("\(error)", code: 74)
            }
            print(format == .json ? view.json : view.table, terminator: format == .json ? "\n" : "")
        }
    }

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start (or restart) SOURCE's plan on day 1, now.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "A [[source]] name.") var source: String

        func run() async throws {
            let p = try await WarmupView.change(common, source, event: .warmupStarted) { old, plan, now in
                StoredWarmup(source: source, plan: plan, day: 1, dayStartedAt: now, status: WarmupStatus.active.rawValue, updatedAt: now)
            }
            print("\(source): warm-up started, day \(p.day) of plan \(p.plan)")
        }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Keep SOURCE on its plan day (its caps still hold) until resumed.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "A [[source]] name.") var source: String

        func run() async throws {
            let p = try await WarmupView.setStatus(common, source, .paused, event: .warmupPaused)
            print("\(source): warm-up paused on day \(p.day)")
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let SOURCE's plan advance again.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "A [[source]] name.") var source: String

        func run() async throws {
            let p = try await WarmupView.setStatus(common, source, .active, event: .warmupResumed)
            print("\(source): warm-up resumed on day \(p.day)")
        }
    }

    struct SkipTo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "skip-to", abstract: "Put SOURCE on plan day DAY, starting now (past the last day: warm, no caps).")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "The plan day (1 is the first).") var day: Int
        @Argument(help: "A [[source]] name.") var source: String

        func run() async throws {
            guard day >= 1 else { throw fail("DAY must be 1 or more", code: 64) }
            let day = self.day
            let p = try await WarmupView.change(common, source, event: .warmupSkipped) { old, plan, now in
                var s = old ?? StoredWarmup(source: source, plan: plan, day: 1, dayStartedAt: now, status: WarmupStatus.active.rawValue, updatedAt: now)
                s.plan = plan
                s.day = day
                s.dayStartedAt = now
                if s.status == WarmupStatus.done.rawValue { s.status = WarmupStatus.active.rawValue }
                return s
            }
            print("\(source): now on day \(p.day) of plan \(p.plan)")
        }
    }
}

struct WarmupView {
    struct Destination {
        var name: String
        var counts: StoredWarmupUsage
    }
    struct Source {
        var name: String
        var address: String
        /// nil: the source has no warm-up plan (listed for its blocklist and bind status).
        var plan: String?
        var state: StoredWarmup?
        var dayCap: Int?
        var hourCap: Int?
        var days: Int
        var destinations: [Destination]
        var listed: [StoredBlocklistStatus]
        var bindError: String?
        var lastEvents: [(at: Int64, kind: String, detail: String)]
    }
    var sources: [Source]
    var now: Int64

    static func load(_ store: Store, _ settings: TernSettings, now: Int64, only: String?) throws -> WarmupView {
        if let only, !settings.sources.contains(where: { $0.name == only }) {
            throw fail("no [[source]] named \(only) in the configuration", code: 64)
        }
        let states = Dictionary(uniqueKeysWithValues: try store.warmupStates().map { ($0.source, $0) })
        let usage = try store.warmupUsage()
        let listed = try store.blocklistStatuses().filter(\.listed)
        let binds = Dictionary(uniqueKeysWithValues: try store.sourceStatuses().map { ($0.source, $0) })
        // The last week's warm-up events by source, newest first (each detail parsed once).
        let events = Dictionary(grouping: try store.events(family: "warmup", since: now - 7 * Warmup.dayMillis, limit: 500)) { e in
            ((try? JSONSerialization.jsonObject(with: Data(e.detail.utf8))) as? [String: Any])?["source"] as? String ?? ""
        }
        let plans = Dictionary(uniqueKeysWithValues: (settings.warmupPlans + [WarmupPlan.builtIn]).reversed().map { ($0.name, $0) })
        var out: [Source] = []
        for s in settings.sources where only == nil || s.name == only {
            let plan = s.warmup.flatMap { plans[$0] }
            let st = plan == nil ? nil : states[s.name]
            let day = st?.day ?? 1
            let done = st?.status == WarmupStatus.done.rawValue
            out.append(Source(name: s.name, address: s.address.description, plan: plan?.name, state: st,
                              dayCap: done ? nil : plan?.cap(day: day), hourCap: done ? nil : plan?.hourlyCap(day: day), days: plan?.daily.count ?? 0,
                              destinations: usage.filter { $0.source == s.name && $0.dayStartedAt == st?.dayStartedAt }.map { Destination(name: $0.destination, counts: $0) },
                              listed: listed.filter { $0.source == s.name }, bindError: binds[s.name]?.bindError,
                              lastEvents: Array((events[s.name] ?? []).prefix(5))))
        }
        return WarmupView(sources: out, now: now)
    }

    static func rate(_ n: Int, _ of: Int) -> Double? { of == 0 ? nil : Double(n) / Double(of) }

    var table: String {
        if sources.isEmpty { return "(no [[source]] in the configuration: the kernel chooses the address, and there is nothing to warm up)\n" }
        var out = ""
        for s in sources {
            let st = s.state
            out += "\(s.name) (\(s.address)): "
            if let plan = s.plan {
                out += "plan \(plan), " + (st.map { "day \($0.day) of \(s.days), \($0.status), day started \(time($0.dayStartedAt))" }
                    ?? "not started yet (starts on day 1 when the server starts)") + "\n"
                out += "  caps per destination: " + (s.dayCap.map { "\($0) a day, \(s.hourCap ?? $0) an hour" } ?? "none (warm)") + "\n"
                if let v = st?.verdict { out += "  last day: \(v)\(st?.reason.map { " — \($0)" } ?? "")\n" }
            } else {
                out += "no warm-up plan (warm)\n"
            }
            if let e = s.bindError { out += "  OUT OF ROTATION: \(e)\n" }
            for l in s.listed { out += "  LISTED on \(l.zone) (\(l.query), \(l.code ?? "?"))\(l.reason.map { ": \($0)" } ?? "") since \(time(l.changedAt))\n" }
            if s.plan != nil && s.destinations.isEmpty { out += "  (nothing sent on this day yet)\n" }
            if s.plan != nil && !s.destinations.isEmpty {
                out += renderTable(header: ["DESTINATION", "SENT", "CAP", "DELIVERED", "DEFERRED", "BOUNCED", "BLOCKED", "THIS HOUR"],
                                   rows: s.destinations.sorted { $0.name < $1.name }.map { d in
                    let c = d.counts
                    let answered = c.delivered + c.deferred + c.bounced
                    return [d.name, String(c.sent), s.dayCap.map(String.init) ?? "-", String(c.delivered),
                            "\(c.deferred) (\(percent(WarmupView.rate(c.deferred, answered))))", "\(c.bounced) (\(percent(WarmupView.rate(c.bounced, answered))))",
                            String(c.blocked), "\(c.hourStartedAt + Warmup.hourMillis > now ? c.hourSent : 0)/\(s.hourCap.map(String.init) ?? "-")"]
                }).split(separator: "\n").map { "  " + $0 }.joined(separator: "\n") + "\n"
            }
            for e in s.lastEvents {
                let f = (try? JSONSerialization.jsonObject(with: Data(e.detail.utf8))) as? [String: Any] ?? [:]
                out += "  \(time(e.at)) \(e.kind.dropFirst("warmup_".count))" + ((f["reason"] as? String).map { ": \($0)" } ?? "") + "\n"
            }
            out += "\n"
        }
        return out
    }

    var json: String {
        JSON.array(sources.map { s in
            .object([
                ("source", .string(s.name)), ("address", .string(s.address)), ("plan", jsonString(s.plan)),
                ("day", s.state.map { .int($0.day) } ?? .null), ("days", .int(s.days)), ("status", jsonString(s.state?.status)),
                ("day_started_at", jsonInt64(s.state?.dayStartedAt)), ("day_cap", s.dayCap.map { .int($0) } ?? .null),
                ("hour_cap", s.hourCap.map { .int($0) } ?? .null), ("last_verdict", jsonString(s.state?.verdict)), ("reason", jsonString(s.state?.reason)),
                ("out_of_rotation", jsonString(s.bindError)),
                ("listed", .array(s.listed.map { .object([("zone", .string($0.zone)), ("code", jsonString($0.code)), ("reason", jsonString($0.reason))]) })),
                ("destinations", .array(s.destinations.map { d in
                    let c = d.counts
                    let answered = c.delivered + c.deferred + c.bounced
                    return .object([("destination", .string(d.name)), ("sent", .int(c.sent)), (AttemptOutcome.delivered.rawValue, .int(c.delivered)),
                                    (AttemptOutcome.deferred.rawValue, .int(c.deferred)), (AttemptOutcome.bounced.rawValue, .int(c.bounced)), ("blocked", .int(c.blocked)),
                                    ("deferral_rate", jsonNumber(WarmupView.rate(c.deferred, answered))),
                                    ("bounce_rate", jsonNumber(WarmupView.rate(c.bounced, answered))),
                                    ("hour_sent", .int(c.hourStartedAt + Warmup.hourMillis > now ? c.hourSent : 0))])
                })),
            ])
        }).text
    }

    /// Pause or resume a plan that has started.
    static func setStatus(_ common: DatabaseOptions, _ source: String, _ status: WarmupStatus, event: EventKind) async throws -> StoredWarmup {
        try await change(common, source, event: event) { old, _, _ in
            guard var row = old else { throw ConfigError("\(source) has not started its warm-up (tern warmup start \(source), or start the server)") }
            row.status = status.rawValue
            return row
        }
    }

    /// Writes an operator's change: `change` gets the current row, the
    /// configured plan's name and the time.
    static func change(_ common: DatabaseOptions, _ source: String, event: EventKind,
                       _ change: @escaping @Sendable (StoredWarmup?, String, Int64) throws -> StoredWarmup) async throws -> StoredWarmup {
        let (store, settings) = try openExisting(common)
        defer { store.close() }
        guard let s = settings.sources.first(where: { $0.name == source }) else {
            throw fail("no [[source]] named \(source) in the configuration (known: \(settings.sources.map(\.name).joined(separator: ", ")))", code: 64)
        }
        guard let plan = s.warmup else { throw fail("[[source]] \(source) has no warm-up plan (add warmup = \"default\")", code: 64) }
        let now = nowMillis()
        do {
            return try await store.changeWarmup(source: source, now: now, event: event) { old in try change(old, plan, now) }
        } catch let e as ConfigError {
            throw fail(e.description, code: 64)
        } catch {
            throw fail("\(error)", code: 74)
        }
    }
}

struct BlocklistCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blocklist", abstract: "DNS blocklists of the sources' addresses and EHLO domains.", subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Look every source (or one) up in the configured zones now, through the configured resolver, and record what changed.",
            discussion: """
                Exit status 0: no source listed; 1: some source listed; other: an error. A zone that does not answer \
                (time-out, or an error code such as Spamhaus's 127.255.255.254 for queries through public resolvers) \
                is shown as failed and changes nothing.
                """)
        @OptionGroup var common: DatabaseOptions
        @Option(help: "Only this source.") var source: String?
        @Option(help: "table or json.") var format: ReportFormat = .table
        @Option(name: .long, help: "Resolver HOST:PORT (repeatable); default: the configuration's.") var resolver: [String] = []

        func run() async throws {
            let (store, settings) = try openExisting(common)
            defer { store.close() }
            if settings.sources.isEmpty { throw fail("no [[source]] in the configuration: nothing to look up", code: 64) }
            if let source, !settings.sources.contains(where: { $0.name == source }) {
                throw fail("no [[source]] named \(source) in the configuration", code: 64)
            }
            let dns: CAresResolver
            do { dns = try settings.resolver(overriding: resolver) } catch { throw fail("\(error)", code: 78) }
            defer { dns.shutdown() }
            // The EHLO names' registered domains, as `tern serve` looks them up.
            let psl = try? PublicSuffixList(path: settings.publicSuffixList)
            let monitor = BlocklistMonitor(config: settings.blocklist, sources: settings.sourceBook, dns: dns, store: store,
                                           domainOf: { psl?.organizationalDomain($0) ?? $0 })
            let results: [BlocklistResult]
            do { results = try await monitor.check(source: source) } catch { throw fail("\(error)", code: 74) }
            let addresses = Dictionary(uniqueKeysWithValues: settings.sources.map { ($0.name, $0.address.description) })
            if format == .json {
                print(JSON.array(results.map { r in
                    var fields: [(String, JSON)] = [("source", .string(r.source)), ("address", .string(addresses[r.source] ?? "")),
                                                    ("zone", .string(r.zone)), ("query", .string(r.query))]
                    switch r.status {
                    case .listed(let code, let reason): fields += [("listed", .bool(true)), ("code", .string(code)), ("reason", jsonString(reason))]
                    case .clear: fields += [("listed", .bool(false)), ("code", .null), ("reason", .null)]
                    case .failed(let why): fields += [("listed", .null), ("code", .null), ("reason", .null), ("error", .string(why))]
                    }
                    return .object(fields)
                }).text)
            } else {
                print(renderTable(header: ["SOURCE", "ADDRESS", "ZONE", "QUERY", "LISTED", "CODE", "REASON"], rows: results.map { r in
                    switch r.status {
                    case .listed(let code, let reason): [r.source, addresses[r.source] ?? "", r.zone, r.query, "yes", code, reason ?? ""]
                    case .clear: [r.source, addresses[r.source] ?? "", r.zone, r.query, "no", "", ""]
                    case .failed(let why): [r.source, addresses[r.source] ?? "", r.zone, r.query, "failed", "", why]
                    }
                }), terminator: "")
            }
            if results.contains(where: { if case .listed = $0.status { true } else { false } }) { throw ExitCode(1) }
        }
    }
}

extension Stats {
    struct Sources: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "sources",
            abstract: "Per source address and provider: volume, delivered, deferred and bounced rates, top deferral reasons.",
            discussion: "Over attempts started in the window (default the last 24 hours). A provider is the providers' table's name for the MX host, else the domain.")
        @OptionGroup var common: DatabaseOptions
        @OptionGroup var window: WindowOptions
        @Option(help: "Deferral reasons per row.") var top = 3
        @Option(help: "table, json or csv.") var format: ReportFormat = .table

        func run() throws {
            let (store, settings) = try openExisting(common)
            defer { store.close() }
            let now = nowMillis()
            let w = try TimeArgument.window(since: window.since, until: window.until, defaultSince: "24h", now: now)!
            let counts: [SourceAttemptCount]
            do { counts = try store.sourceAttempts(since: w.since) } catch { throw fail("\(error)", code: 74) }
            let rows = SourceStats.rows(counts, table: settings.providerTable, top: top)
            print(SourceStats.render(rows, window: w, format: format), terminator: format == .json ? "\n" : "")
        }
    }
}

enum SourceStats {
    struct Row {
        var source: String
        var address: String
        var provider: String
        var attempts = 0
        var delivered = 0
        var deferred = 0
        var bounced = 0
        var reasons: [(reply: String, count: Int)] = []
    }

    static func rows(_ counts: [SourceAttemptCount], table: ProviderTable, top: Int) -> [Row] {
        var byKey: [String: Row] = [:]
        var reasons: [String: [String: Int]] = [:]
        for c in counts {
            let source = c.source ?? "(kernel)"
            let address = c.sourceAddress ?? ""
            let provider = c.mxHost.flatMap { table.provider(forMX: $0) } ?? c.domain
            let key = "\(source)\u{1}\(address)\u{1}\(provider)"
            var r = byKey[key] ?? Row(source: source, address: address, provider: provider)
            r.attempts += c.count
            switch AttemptOutcome(rawValue: c.outcome) {
            case .delivered?: r.delivered += c.count
            case .deferred?:
                r.deferred += c.count
                let reply = [c.code.map(String.init), c.enhanced, c.text.map { String($0.prefix(80)) }].compactMap { $0 }.joined(separator: " ")
                reasons[key, default: [:]][reply, default: 0] += c.count
            case .bounced?: r.bounced += c.count
            case nil: break
            }
            byKey[key] = r
        }
        return byKey.map { key, row in
            var r = row
            r.reasons = (reasons[key] ?? [:]).sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.prefix(top).map { ($0.key, $0.value) }
            return r
        }.sorted { ($0.source, $0.provider, $0.address) < ($1.source, $1.provider, $1.address) }
    }

    static func rate(_ n: Int, _ of: Int) -> Double? { of == 0 ? nil : Double(n) / Double(of) }

    static func render(_ rows: [Row], window w: TimeWindow, format: ReportFormat) -> String {
        switch format {
        case .json:
            return JSON.object([("since", .int64(w.since)), ("until", .int64(w.until)), ("sources", .array(rows.map { r in
                .object([("source", .string(r.source)), ("address", .string(r.address)), ("provider", .string(r.provider)),
                         ("attempts", .int(r.attempts)), (AttemptOutcome.delivered.rawValue, .int(r.delivered)), (AttemptOutcome.deferred.rawValue, .int(r.deferred)), (AttemptOutcome.bounced.rawValue, .int(r.bounced)),
                         ("delivered_rate", jsonNumber(rate(r.delivered, r.attempts))), ("deferred_rate", jsonNumber(rate(r.deferred, r.attempts))),
                         ("bounced_rate", jsonNumber(rate(r.bounced, r.attempts))),
                         ("top_deferrals", .array(r.reasons.map { .object([("reply", .string($0.reply)), ("count", .int($0.count))]) }))])
            }))]).text
        case .csv:
            return renderCSV(header: ["source", "address", "provider", "attempts"] + AttemptOutcome.allCases.map(\.rawValue)
                                      + AttemptOutcome.allCases.map { $0.rawValue + "_rate" } + ["top_deferral", "top_deferral_count"], rows: rows.map { r in
                [r.source, r.address, r.provider, String(r.attempts), String(r.delivered), String(r.deferred), String(r.bounced),
                 csvRate(rate(r.delivered, r.attempts)), csvRate(rate(r.deferred, r.attempts)), csvRate(rate(r.bounced, r.attempts)),
                 r.reasons.first?.reply ?? "", r.reasons.first.map { String($0.count) } ?? ""]
            })
        case .table:
            return "Attempts started \(StatsFormatter.windowText(w)), by source and provider\n\n"
                + (rows.isEmpty ? "(none)\n" : renderTable(
                    header: ["SOURCE", "ADDRESS", "PROVIDER", "ATTEMPTS", "DELIVERED", "DEFERRED", "BOUNCED", "TOP DEFERRALS"], rows: rows.map { r in
                        [r.source, r.address, r.provider, String(r.attempts), percent(rate(r.delivered, r.attempts)), percent(rate(r.deferred, r.attempts)),
                         percent(rate(r.bounced, r.attempts)), r.reasons.map { "\($0.reply) (×\($0.count))" }.joined(separator: "; ")]
                    }))
        }
    }

    static func csvRate(_ r: Double?) -> String { r.map { String(format: "%.4f", $0) } ?? "" }
}
