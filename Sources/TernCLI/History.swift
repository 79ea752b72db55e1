// `tern history` and `tern stats routes|queue|recipients`: what happened to
// mail, from the database, for people (aligned tables) and machines (JSON,
// CSV).

import ArgumentParser
import Foundation
import TernProtocol
import TernRouting
import TernStore

struct WindowOptions: ParsableArguments {
    @Option(help: ArgumentHelp("From this time: 30m, 24h, 7d (ago), 2026-11-29, 2026-11-29T10:00 (UTC) or Unix ms.", valueName: "TIME"))
    var since: String?

    @Option(help: ArgumentHelp("Up to this time (default now); same forms as --since.", valueName: "TIME"))
    var until: String?
}

struct History: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The timeline of each matching recipient: received, every attempt with its reply, its state now.",
        discussion: "Newest first. Filters combine; each one alone uses an index. Without filters, the most recent recipients.")

    @OptionGroup var common: DatabaseOptions
    @OptionGroup var window: WindowOptions
    @Option(help: ArgumentHelp("Recipient address.", valueName: "ADDRESS")) var rcpt: String?
    @Option(help: ArgumentHelp("Sender address (<> for the null sender).", valueName: "ADDRESS")) var from: String?
    @Option(help: ArgumentHelp("Recipient domain.", valueName: "DOMAIN")) var domain: String?
    @Option(help: ArgumentHelp("Queue id.", valueName: "ID")) var message: String?
    @Option(name: .customLong("message-id"),
            help: ArgumentHelp("The Message-ID header's id, with or without <>.", valueName: "ID")) var messageID: String?
    @Option(help: "Only recipients in this state.") var state: RecipientState?
    @Option(help: "At most this many recipients.") var limit = 100
    @Option(help: "table, json or csv (one line per timeline step).") var format: ReportFormat = .table

    func run() throws {
        let (store, _) = try openExisting(common)
        defer { store.close() }
        var f = HistoryFilter()
        f.recipient = rcpt
        f.sender = from
        f.domain = domain
        f.queueID = message
        f.headerMessageID = messageID.map(History.bareMessageID)
        f.state = state
        f.limit = max(1, limit)
        f.window = try TimeArgument.window(since: window.since, until: window.until, defaultSince: nil, now: nowMillis())
        let entries: [HistoryEntry]
        do { entries = try store.history(f) } catch { throw fail("\(error)", code: 74) }
        switch format {
        case .json: print(HistoryFormatter.json(entries))
        case .csv: print(HistoryFormatter.csv(entries), terminator: "")
        case .table: print(HistoryFormatter.text(entries), terminator: "")
        }
    }
}

extension History {
    /// A Message-ID with or without its angle brackets, without.
    static func bareMessageID(_ id: String) -> String {
        id.hasPrefix("<") && id.hasSuffix(">") && id.count >= 2 ? String(id.dropFirst().dropLast()) : id
    }
}

enum HistoryFormatter {
    static func reply(_ code: Int?, _ enhanced: String?, _ text: String?) -> String {
        [code.map(String.init), enhanced, text].compactMap { $0 }.joined(separator: " ")
    }

    static func describe(_ t: TimelineItem) -> String {
        switch t.kind {
        case .event(.received): return EventKind.received.rawValue + (t.mxAddress.map { " from \($0)" } ?? " locally") + (t.text.map { ", \($0)" } ?? "")
        case .attempt:
            let via = [t.mxHost, t.mxAddress.map { "[\($0)]" }].compactMap { $0 }.joined()
            let tls = t.tls.map { " \($0)" } ?? ""
            let category = t.category.map { " [\($0)]" } ?? ""
            return "\(t.outcome ?? "attempt") via \(via.isEmpty ? "-" : via)\(tls) in \(number(t.seconds, digits: 2)) s: \(reply(t.code, t.enhanced, t.text))\(category)"
        default: return t.kind.description + (t.outcome.map { " \($0)" } ?? "")
        }
    }

    static func text(_ entries: [HistoryEntry]) -> String {
        if entries.isEmpty { return "no matching recipients\n" }
        var out = ""
        for e in entries {
            out += "\(e.queueID)  <\(e.sender)> → <\(e.recipient)>  \(e.state.rawValue), \(e.attempts) attempt\(e.attempts == 1 ? "" : "s")"
            if let s = e.secondsToDeliver { out += ", delivered in \(number(s)) s" }
            out += "\n"
            for t in e.timeline { out += "  \(time(t.at))  \(describe(t))\n" }
        }
        return (out + "\(entries.count) recipient\(entries.count == 1 ? "" : "s")\n").escapingControlCharacters(keepingNewlines: true)
    }

    static func json(_ entries: [HistoryEntry]) -> String {
        JSON.array(entries.map { e in
            .object([
                ("queue_id", .string(e.queueID)), ("sender", .string(e.sender)), ("recipient", .string(e.recipient)),
                ("domain", .string(e.domain)), ("state", .string(e.state.rawValue)), ("attempts", .int(e.attempts)),
                ("received_at", .int64(e.receivedAt)), ("final_at", jsonInt64(e.finalAt)), ("final_code", jsonInt(e.finalCode)),
                ("final_enhanced", jsonString(e.finalEnhanced)), ("final_text", jsonString(e.finalText)),
                ("mx_host", jsonString(e.mxHost)), ("tls", jsonString(e.tls)), ("seconds_to_deliver", jsonNumber(e.secondsToDeliver)),
                ("authentication", e.authentication.map { a in
                    .object([("spf", .string(a.spf)), ("dkim", .string(a.dkim)), ("dmarc", .string(a.dmarc)), ("disposition", .string(a.disposition))])
                } ?? .null),
                ("timeline", .array(e.timeline.map { t in
                    .object([("at", .int64(t.at)), ("kind", .string(t.kind.description)), ("mx_host", jsonString(t.mxHost)),
                             ("address", jsonString(t.mxAddress)), ("tls", jsonString(t.tls)), ("code", jsonInt(t.code)),
                             ("enhanced", jsonString(t.enhanced)), ("text", jsonString(t.text)), ("outcome", jsonString(t.outcome)),
                             ("seconds", jsonNumber(t.seconds)), ("category", jsonString(t.category))])
                })),
            ])
        }).text
    }

    static func csv(_ entries: [HistoryEntry]) -> String {
        let header = ["queue_id", "sender", "recipient", "state", "at", "step", "mx_host", "address", "tls", "code", "enhanced", "text", "outcome"]
        let rows = entries.flatMap { e in
            e.timeline.map { t in
                [e.queueID, e.sender, e.recipient, e.state.rawValue, time(t.at), t.kind.description, t.mxHost ?? "", t.mxAddress ?? "", t.tls ?? "",
                 t.code.map(String.init) ?? "", t.enhanced ?? "", t.text ?? "", t.outcome ?? ""]
            }
        }
        return renderCSV(header: header, rows: rows)
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Routing statistics, the queue's shape, and recipient-list analytics.",
        subcommands: [Routes.self, QueueShape.self, Recipients.self, Sources.self, Rebuild.self])

    struct Rebuild: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Recompute the daily rollups behind `tern stats` from the raw rows (they are kept up to date as mail flows; this is for after bulk imports or if in doubt).")
        @OptionGroup var common: DatabaseOptions

        func run() async throws {
            let (store, _) = try openExisting(common)
            defer { store.close() }
            let started = Date()
            do { try await store.rebuildRollups() } catch { throw fail("\(error)", code: 74) }
            print(String(format: "rollups rebuilt in %.1f s", Date().timeIntervalSince(started)))
        }
    }

    struct Routes: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "routes",
            abstract: "Per destination domain and per MX host: volumes, delivery and deferral rates, time to deliver, errors, cool-downs.",
            discussion: """
                Recipient figures count the recipients received in the window (default the last 24 hours); attempt figures \
                (attempts, deferral rate, top deferral, MX hosts) the attempts started in it. Whole days come from daily \
                rollups, so weeks answer as fast as a day. Median and p95 are the upper bounds of histogram buckets \
                (1-2-5 steps; the views in the database give exact values).
                """)
        @OptionGroup var common: DatabaseOptions
        @OptionGroup var window: WindowOptions
        @Option(help: "Rows per table.") var limit = 50
        @Option(help: "table, json or csv.") var format: ReportFormat = .table

        func run() throws {
            let (store, settings) = try openExisting(common)
            defer { store.close() }
            let now = nowMillis()
            let w = try TimeArgument.window(since: window.since, until: window.until, defaultSince: "24h", now: now)!
            let text: String
            do { text = try Routes.report(store, settings, window: w, now: now, limit: limit, format: format) } catch { throw fail("\(error)", code: 74) }
            print(text, terminator: format == .json ? "\n" : "")
        }

        /// The report, for this command and the API.
        static func report(_ store: Store, _ settings: TernSettings, window w: TimeWindow, now: Int64, limit: Int, format: ReportFormat) throws -> String {
            let listed = try store.blocklistStatuses().filter(\.listed)
            let unbound = try store.sourceStatuses().filter { $0.bindError != nil }
            let (domains, hosts) = try store.routeStats(w, now: now, limit: limit)
            let cooling = try store.coolingHosts(now: now)
            let categories = try store.categoryCounts(w)
            let shaping = try ShapingView.load(store, settings, now: now).filter { $0.mode != .normal }
            let changes = try store.shapingEvents(since: w.since, limit: limit).filter { $0.at < w.until }
            return StatsFormatter.routes(domains, hosts, cooling: cooling, window: w, format: format, table: settings.providerTable,
                                         categories: categories, shaping: shaping, changes: changes, listed: listed, unbound: unbound)
        }
    }

    struct QueueShape: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "queue", abstract: "Waiting recipients per domain by age (like Postfix's qshape).")
        @OptionGroup var common: DatabaseOptions
        @Option(help: "Rows.") var limit = 50
        @Option(help: "table, json or csv.") var format: ReportFormat = .table

        func run() throws {
            let (store, _) = try openExisting(common)
            defer { store.close() }
            let text: String
            do { text = StatsFormatter.queue(try store.queueShape(now: nowMillis(), limit: limit), format: format) } catch { throw fail("\(error)", code: 74) }
            print(text, terminator: format == .json ? "\n" : "")
        }
    }

    struct Recipients: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "recipients",
            abstract: "Recipient-list analytics: composition by domain and provider, bounce and deferral rates, repeated bounces, role accounts, suppression candidates.",
            discussion: "Over recipients received (or, for outcomes, final) in the window; default the last 30 days.")
        @OptionGroup var common: DatabaseOptions
        @OptionGroup var window: WindowOptions
        @Option(help: "Rows per section.") var top = 20
        @Option(help: "table, json or csv.") var format: ReportFormat = .table

        func run() throws {
            let (store, settings) = try openExisting(common)
            defer { store.close() }
            let w = try TimeArgument.window(since: window.since, until: window.until, defaultSince: "30d", now: nowMillis())!
            let text: String
            do { text = try Recipients.report(store, settings, window: w, top: top, format: format) } catch { throw fail("\(error)", code: 74) }
            print(text, terminator: format == .json ? "\n" : "")
        }

        /// The report, for this command and the API.
        static func report(_ store: Store, _ settings: TernSettings, window w: TimeWindow, top: Int, format: ReportFormat) throws -> String {
            let a = try store.recipientAnalytics(w, top: top, nonexistent: EnhancedStatus.nonexistentAddress.map(\.description))
            return StatsFormatter.recipients(a, window: w, format: format, table: settings.providerTable, categories: try store.categoryCounts(w))
        }
    }
}

/// How statistics name a destination's provider: the provider table's name
/// (`google`, `microsoft`, …, and the configuration's `[[provider]]`s), else
/// the MX host's last two labels.
enum Provider {
    static func name(forMX host: String?, _ table: ProviderTable) -> String {
        guard let h = host?.lowercased(), !h.isEmpty else { return "unknown" }
        if let p = table.provider(forMX: h) { return p }
        return h.split(separator: ".").suffix(2).joined(separator: ".")
    }
}

enum StatsFormatter {
    static func windowText(_ w: TimeWindow) -> String { "\(time(w.since)) – \(time(w.until)) UTC" }

    static func categoriesJSON(_ c: [CategoryCount]) -> JSON {
        .array(c.map { .object([("category", .string($0.category)), (AttemptOutcome.deferred.rawValue, .int($0.deferred)),
                                (AttemptOutcome.bounced.rawValue, .int($0.bounced))]) })
    }

    static func categoriesTable(_ c: [CategoryCount]) -> String {
        c.isEmpty ? "(none)\n" : renderTable(header: ["CATEGORY", "DEFERRED", "BOUNCED"], rows: c.map { [$0.category, String($0.deferred), String($0.bounced)] })
    }

    static func routes(_ domains: [DomainStats], _ hosts: [MXStats], cooling: [StoredHostHealth], window w: TimeWindow,
                       format: ReportFormat, table: ProviderTable = ProviderTable(), categories: [CategoryCount] = [],
                       shaping: [ShapingView.Row] = [], changes: [(at: Int64, kind: String, detail: String)] = [],
                       listed: [StoredBlocklistStatus] = [], unbound: [StoredSourceStatus] = []) -> String {
        // A change's detail: {"destination", "reason", "until", "factor", …}.
        let parsed = changes.map { c -> (at: Int64, kind: String, fields: [String: Any]) in
            (c.at, String(c.kind.dropFirst("shaping_".count)),
             (try? JSONSerialization.jsonObject(with: Data(c.detail.utf8))) as? [String: Any] ?? [:])
        }
        if format == .json {
            return JSON.object([
                ("shaping_changes", .array(parsed.map { c in
                    .object([("at", .int64(c.at)), ("change", .string(c.kind)),
                             ("destination", jsonString(c.fields["destination"] as? String)), ("reason", jsonString(c.fields["reason"] as? String)),
                             ("until", jsonInt64((c.fields["until"] as? NSNumber)?.int64Value))])
                })),
                ("failures_by_category", categoriesJSON(categories)),
                ("sources_listed", .array(listed.map { l in
                    .object([("source", .string(l.source)), ("query", .string(l.query)), ("zone", .string(l.zone)), ("code", jsonString(l.code)),
                             ("reason", jsonString(l.reason)), ("since", .int64(l.changedAt))])
                })),
                ("sources_unbound", .array(unbound.map { u in
                    .object([("source", .string(u.source)), ("address", .string(u.address)), ("error", jsonString(u.bindError)),
                             ("since", jsonInt64(u.failedAt))])
                })),
                ("shaping", .array(shaping.map { r in
                    .object([("destination", .string(r.destination)), ("state", .string(r.mode.rawValue)), ("reason", jsonString(r.reason)),
                             ("until", jsonInt64(r.until)), ("factor", .double(r.factor))])
                })),
                ("since", .int64(w.since)), ("until", .int64(w.until)),
                ("domains", .array(domains.map { d in
                    .object([("domain", .string(d.domain)), ("provider", .string(Provider.name(forMX: d.mxHosts.first, table))),
                             ("recipients", .int(d.recipients)), (RecipientState.delivered.rawValue, .int(d.delivered)),
                             (RecipientState.bounced.rawValue, .int(d.bounced)), (RecipientState.expired.rawValue, .int(d.expired)), (RecipientState.suppressed.rawValue, .int(d.suppressed)),
                             ("waiting", .int(d.waiting)), ("delivery_rate", jsonNumber(d.deliveryRate)), ("attempts", .int(d.attempts)),
                             ("deferral_rate", jsonNumber(d.deferralRate)), ("median_seconds", jsonNumber(d.medianSeconds)),
                             ("p95_seconds", jsonNumber(d.p95Seconds)), ("top_deferral", jsonString(d.topDeferral)),
                             ("top_deferral_count", jsonInt(d.topDeferralCount)), ("mx_hosts", .array(d.mxHosts.map { .string($0) }))])
                })),
                ("mx_hosts", .array(hosts.map { h in
                    .object([("mx_host", .string(h.host)), ("domains", .array(h.domains.map { .string($0) })), ("attempts", .int(h.attempts)),
                             ("success_rate", .double(h.successRate)), ("tls_share", .double(h.tlsShare)),
                             ("mean_session_seconds", .double(h.meanSessionSeconds)), ("p95_session_seconds", jsonNumber(h.p95SessionSeconds)),
                             ("last_error", jsonString(h.lastError)), ("last_error_at", jsonInt64(h.lastErrorAt)),
                             ("consecutive_failures", jsonInt(h.consecutiveFailures)), ("cooling_down_until", jsonInt64(h.coolingDownUntil))])
                })),
                ("cooling_down", .array(cooling.map { c in
                    .object([("mx_host", .string(c.host)), ("consecutive_failures", .int(c.failures)),
                             ("until", jsonInt64(c.cooldownUntil)), ("last_error", jsonString(c.lastError)),
                             ("last_failure_at", jsonInt64(c.lastFailureAt))])
                })),
            ]).text
        }
        let dHeader = ["DOMAIN", "PROVIDER", "RCPTS", "DELIVERED", "BOUNCED", "EXPIRED", "SUPPRESSED", "WAITING", "DELIVERY", "ATTEMPTS", "DEFERRAL",
                       "MEDIAN S", "P95 S", "MX HOSTS", "TOP DEFERRAL"]
        let dRows = domains.map { d in
            [d.domain, d.mxHosts.isEmpty ? "" : Provider.name(forMX: d.mxHosts.first, table), String(d.recipients), String(d.delivered), String(d.bounced), String(d.expired), String(d.suppressed),
             String(d.waiting), percent(d.deliveryRate), String(d.attempts), percent(d.deferralRate), number(d.medianSeconds),
             number(d.p95Seconds), d.mxHosts.prefix(3).joined(separator: ","),
             d.topDeferral.map { "\($0) (×\(d.topDeferralCount ?? 0))" } ?? ""]
        }
        let hHeader = ["MX HOST", "DOMAINS", "ATTEMPTS", "SUCCESS", "TLS", "MEAN S", "P95 S", "LAST ERROR", "AT", "COOLING DOWN UNTIL"]
        let hRows = hosts.map { h in
            [h.host, h.domains.prefix(3).joined(separator: ","), String(h.attempts), percent(h.successRate), percent(h.tlsShare),
             number(h.meanSessionSeconds, digits: 2), number(h.p95SessionSeconds, digits: 2), h.lastError ?? "", time(h.lastErrorAt),
             h.coolingDownUntil.map { "\(time($0)) (\(h.consecutiveFailures ?? 0) failures in a row)" } ?? ""]
        }
        let cHeader = ["MX HOST", "FAILURES IN A ROW", "SKIPPED UNTIL", "WHY (LAST ERROR)", "AT"]
        let cRows = cooling.map { [$0.host, String($0.failures), time($0.cooldownUntil), $0.lastError ?? "", time($0.lastFailureAt)] }
        if format == .csv {
            return renderCSV(header: ["table"] + dHeader.map { $0.lowercased() }, rows: dRows.map { ["domain"] + $0 })
                + renderCSV(header: ["table"] + hHeader.map { $0.lowercased() }, rows: hRows.map { ["mx_host"] + $0 })
                + renderCSV(header: ["table"] + cHeader.map { $0.lowercased() }, rows: cRows.map { ["cooling_down"] + $0 })
        }
        return "Recipients received \(windowText(w))\n\n" + renderTable(header: dHeader, rows: dRows)
            + "\nMX hosts, attempts started in the window\n\n" + renderTable(header: hHeader, rows: hRows)
            + "\nMX hosts cooling down now (circuit breaker)\n\n" + (cRows.isEmpty ? "(none)\n" : renderTable(header: cHeader, rows: cRows))
            + "\nDestinations paced now (traffic shaping: tern shaping show)\n\n"
            + (shaping.isEmpty ? "(none)\n" : renderTable(header: ["DESTINATION", "STATE", "UNTIL", "REASON"], rows: shaping.map {
                [$0.destination, $0.mode.rawValue, ShapingView.time($0.until), $0.reason ?? "-"] }))
            + "\nShaping changes in the window (newest first)\n\n"
            + (parsed.isEmpty ? "(none)\n" : renderTable(header: ["AT", "DESTINATION", "CHANGE", "UNTIL", "REASON"], rows: parsed.map { c in
                [time(c.at), c.fields["destination"] as? String ?? "-", c.kind, ShapingView.time((c.fields["until"] as? NSNumber)?.int64Value),
                 c.fields["reason"] as? String ?? "-"] }))
            + "\nFailed attempts by category, attempts started in the window\n\n" + categoriesTable(categories)
            + "\nSources listed on a blocklist or out of rotation now (tern warmup status, tern blocklist check)\n\n"
            + (listed.isEmpty && unbound.isEmpty ? "(none)\n" : renderTable(header: ["SOURCE", "STATUS", "SINCE", "WHY"],
                rows: listed.map { [$0.source, "listed on \($0.zone) (\($0.code ?? "?"))", time($0.changedAt), $0.reason ?? "-"] }
                    + unbound.map { [$0.source, "cannot bind \($0.address)", time($0.failedAt), $0.bindError ?? "-"] }))
    }

    static func queue(_ rows: [QueueShapeRow], format: ReportFormat) -> String {
        if format == .json {
            return JSON.array(rows.map { r in
                .object([("domain", .string(r.domain)), ("total", .int(r.total))]
                        + zip(QueueShapeRow.bucketNames, r.buckets).map { ($0.0, JSON.int($0.1)) })
            }).text
        }
        let header = ["DOMAIN", "TOTAL"] + QueueShapeRow.bucketNames
        var table = rows.map { r in [r.domain, String(r.total)] + r.buckets.map(String.init) }
        if format == .table {
            let total = ["TOTAL", String(rows.map(\.total).reduce(0, +))]
                + (0..<QueueShapeRow.bucketNames.count).map { i in String(rows.map { $0.buckets[i] }.reduce(0, +)) }
            table.insert(total, at: 0)
        }
        return render(format, header: header, rows: table)
    }

    static func recipients(_ a: RecipientAnalytics, window w: TimeWindow, format: ReportFormat, table: ProviderTable = ProviderTable(),
                           categories: [CategoryCount] = []) -> String {
        let providers = Dictionary(grouping: a.domains, by: { Provider.name(forMX: $0.mxHost, table) })
            .map { (name: $0.key, recipients: $0.value.map(\.recipients).reduce(0, +), domains: $0.value.count) }
            .sorted { ($0.recipients, $1.name) > ($1.recipients, $0.name) }
        func share(_ n: Int) -> Double? { a.total > 0 ? Double(n) / Double(a.total) : nil }
        if format == .json {
            return JSON.object([
                ("since", .int64(w.since)), ("until", .int64(w.until)), ("recipients", .int(a.total)),
                (RecipientState.suppressed.rawValue, .int(a.suppressedInWindow)),
                ("domains", .array(a.perDomain.map { d in
                    .object([("domain", .string(d.domain)), ("recipients", .int(d.recipients)), ("share", jsonNumber(share(d.recipients))),
                             ("provider", .string(Provider.name(forMX: d.mxHosts.first, table))),
                             ("hard_bounce_rate", jsonNumber(d.recipients > 0 ? Double(d.bounced) / Double(d.recipients) : nil)),
                             ("deferral_rate", jsonNumber(d.deferralRate))])
                })),
                ("providers", .array(providers.map { p in
                    .object([("provider", .string(p.name)), ("recipients", .int(p.recipients)), ("domains", .int(p.domains))])
                })),
                ("repeated_bounces", .array(a.repeatedBounces.map(addressJSON))),
                ("role_accounts", .array(a.roleAccounts.map { .object([("role", .string($0.role)), ("recipients", .int($0.recipients))]) })),
                ("suppression_candidates", .array(a.suppressionCandidates.map(addressJSON))),
                ("failures_by_category", categoriesJSON(categories)),
            ]).text
        }
        let domainRows = a.perDomain.map { d in
            [d.domain, String(d.recipients), percent(share(d.recipients)), Provider.name(forMX: d.mxHosts.first, table),
             percent(d.recipients > 0 ? Double(d.bounced) / Double(d.recipients) : nil), percent(d.deferralRate)]
        }
        let domainHeader = ["DOMAIN", "RCPTS", "SHARE", "PROVIDER", "HARD BOUNCES", "DEFERRALS"]
        let providerRows = providers.map { [$0.name, String($0.recipients), percent(share($0.recipients)), String($0.domains)] }
        let providerHeader = ["PROVIDER", "RCPTS", "SHARE", "DOMAINS"]
        let bounceRows = a.repeatedBounces.map { [$0.address, String($0.count), time($0.lastAt), $0.lastReply ?? ""] }
        let bounceHeader = ["ADDRESS", "BOUNCES", "LAST", "LAST REPLY"]
        let roleRows = a.roleAccounts.map { [$0.role + "@", String($0.recipients), percent(share($0.recipients))] }
        let roleHeader = ["ROLE", "RCPTS", "SHARE"]
        let candidateRows = a.suppressionCandidates.map { [$0.address, String($0.count), time($0.lastAt), $0.lastReply ?? ""] }
        let candidateHeader = ["ADDRESS", "FAILURES", "LAST", "LAST REPLY"]
        if format == .csv {
            return renderCSV(header: ["section"] + domainHeader.map { $0.lowercased() }, rows: domainRows.map { ["domain"] + $0 })
                + renderCSV(header: ["section"] + providerHeader.map { $0.lowercased() }, rows: providerRows.map { ["provider"] + $0 })
                + renderCSV(header: ["section"] + bounceHeader.map { $0.lowercased() }, rows: bounceRows.map { ["repeated_bounce"] + $0 })
                + renderCSV(header: ["section"] + roleHeader.map { $0.lowercased() }, rows: roleRows.map { ["role_account"] + $0 })
                + renderCSV(header: ["section"] + candidateHeader.map { $0.lowercased() }, rows: candidateRows.map { ["suppression_candidate"] + $0 })
                + renderCSV(header: ["section", "category", AttemptOutcome.deferred.rawValue, AttemptOutcome.bounced.rawValue],
                            rows: categories.map { ["failure_category", $0.category, String($0.deferred), String($0.bounced)] })
        }
        var out = "\(a.total) recipients received \(windowText(w)); \(a.suppressedInWindow) suppressed\n"
        out += "\nBy domain\n" + renderTable(header: domainHeader, rows: domainRows)
        out += "\nBy provider (from the MX hosts used)\n" + renderTable(header: providerHeader, rows: providerRows)
        out += "\nAddresses that bounced more than once\n" + (bounceRows.isEmpty ? "(none)\n" : renderTable(header: bounceHeader, rows: bounceRows))
        out += "\nRole accounts\n" + (roleRows.isEmpty ? "(none)\n" : renderTable(header: roleHeader, rows: roleRows))
        out += "\nSuppression candidates (not suppressed yet; `tern suppress add ADDRESS`)\n"
            + (candidateRows.isEmpty ? "(none)\n" : renderTable(header: candidateHeader, rows: candidateRows))
        out += "\nFailed attempts by category (bounce classification)\n" + categoriesTable(categories)
        return out
    }

    static func addressJSON(_ c: AddressCount) -> JSON {
        .object([("address", .string(c.address)), ("count", .int(c.count)), ("last_at", jsonInt64(c.lastAt)), ("last_reply", jsonString(c.lastReply))])
    }
}
