// `tern shaping show|pause|resume|set`: traffic shaping per destination
// (issue 18). `show` reads what the running server last wrote (its state
// and a snapshot of open connections and tokens, at most two seconds old)
// and the configuration; the others write an operator override that a
// running `tern serve` applies within a second, with an event.

import ArgumentParser
import Foundation
import TernRouting
import TernScheduler
import TernStore

struct ShapingCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shaping",
        abstract: "Show and steer traffic shaping per destination (a provider such as google, or a domain).",
        discussion: """
            A destination is a provider from the providers' table (google, microsoft, yahoo, apple, …: \
            every domain whose MX hosts are theirs) or a domain. Limits come from [shaping] and \
            [[shaping.destination]]; throttling rules cut them when a destination says "slow down" and \
            they climb back by themselves. pause, resume and set take effect in a running server within \
            a second and are recorded as events. docs/shaping.md explains it all.
            """,
        subcommands: [Show.self, Pause.self, Resume.self, Set.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each destination's configured and effective limits, tokens and active rule.")
        @OptionGroup var common: DatabaseOptions
        @Option(help: "Only this destination (a provider name or a domain).") var destination: String?
        @Option(help: "table or json.") var format: ReportFormat = .table

        func run() async throws {
            let (store, settings) = try openExisting(common)
            defer { store.close() }
            let now = nowMillis()
            let rows = try ShapingView.load(store, settings, now: now)
            var shown = rows
            if let d = destination {
                let name = try ShapingView.destination(d, store, settings)
                shown = rows.filter { $0.destination == name }
                if shown.isEmpty { shown = [ShapingView.row(name, state: nil, override: nil, settings, now: now)] }
            }
            switch format {
            case .json: print(ShapingView.json(shown, now: now))
            default: print(ShapingView.table(shown, now: now), terminator: "")
            }
        }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop every connection and message to DEST until resumed (mail waits, nothing bounces).")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "A provider name or a domain.") var destination: String

        func run() async throws {
            try await ShapingView.change(common, destination, event: .shapingPaused, detail: [:], reset: false) { $0.paused = true }
            print("paused \(destination)")
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End a pause, and any automatic throttling or suspension, of DEST now.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "A provider name or a domain.") var destination: String

        func run() async throws {
            try await ShapingView.change(common, destination, event: .shapingResumed, detail: ["reason": "resumed by the operator"], reset: true) {
                $0.paused = false
            }
            print("resumed \(destination)")
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set limits of DEST over the configuration: KEY=VALUE … (an empty VALUE removes the operator's value).",
            discussion: "Keys: \(ShapingLimits.keys.joined(separator: ", ")).")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "A provider name or a domain.") var destination: String
        @Argument(help: "KEY=VALUE pairs.") var pairs: [String]

        func run() async throws {
            guard !pairs.isEmpty else { throw fail("give at least one KEY=VALUE", code: 64) }
            var parsed: [(String, String)] = []
            var check = ShapingLimits()
            for p in pairs {
                guard let eq = p.firstIndex(of: "=") else { throw fail("\(p): expected KEY=VALUE", code: 64) }
                let (k, v) = (String(p[..<eq]), String(p[p.index(after: eq)...]))
                do { try check.set(k, v) } catch { throw fail("\(error)", code: 64) }
                parsed.append((k, v))
            }
            let detail = Dictionary(parsed, uniquingKeysWith: { _, b in b })
            let changes = parsed
            try await ShapingView.change(common, destination, event: .shapingSet, detail: detail, reset: false) { o in
                var l = (try? JSONDecoder().decode(ShapingLimits.self, from: Data(o.limits.utf8))) ?? ShapingLimits()
                for (k, v) in changes { try? l.set(k, v) }
                o.limits = String(decoding: (try? JSONEncoder().encode(l)) ?? Data("{}".utf8), as: UTF8.self)
            }
            print("set \(parsed.map { "\($0.0)=\($0.1)" }.joined(separator: " ")) for \(destination)")
        }
    }
}

/// What `tern shaping show` and `tern stats routes` print.
enum ShapingView {
    struct Row {
        var destination: String
        var source: String
        var mode: ShapingMode
        var reason: String?
        var rule: String?
        var until: Int64?
        var factor: Double
        var configured: ShapingLimits
        var operatorLimits: ShapingLimits
        var effective: ShapingLimits
        var open: Int
        var tokens: [Double]
        var updatedAt: Int64?
    }

    /// Every destination that is configured, has state, or has an override.
    static func load(_ store: Store, _ settings: TernSettings, now: Int64) throws -> [Row] {
        let states = try store.shapingStates()
        let overrides = try store.shapingOverrides()
        var names = Swift.Set(settings.shapingDestinations.keys)
        names.formUnion(states.map(\.destination))
        names.formUnion(overrides.map(\.destination))
        // One row per source that has state for the destination (sources, issue 19), else one.
        return names.sorted().flatMap { name -> [Row] in
            let mine = states.filter { $0.destination == name }
            func override(_ source: String) -> StoredShapingOverride? {
                overrides.first { $0.destination == name && $0.source == source } ?? overrides.first { $0.destination == name && $0.source.isEmpty }
            }
            if mine.isEmpty { return [row(name, state: nil, override: override(""), settings, now: now)] }
            return mine.map { row(name, state: $0, override: override($0.source), settings, now: now) }
        }
    }

    static func row(_ name: String, state: StoredShapingState?, override: StoredShapingOverride?, _ settings: TernSettings, now: Int64) -> Row {
        var shaper = Shaper(config: settings.shapingConfig)
        let key = ShapingKey(destination: name)
        if let state { shaper.restore(key, ShapingGate.state(from: state)) }
        let op = override.flatMap { try? JSONDecoder().decode(ShapingLimits.self, from: Data($0.limits.utf8)) } ?? ShapingLimits()
        shaper.setOperator(key, paused: override?.paused ?? false, limits: op)
        let st = shaper.state(key)
        let tokens = state?.tokens.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [Double] } ?? []
        return Row(destination: name, source: state?.source ?? "", mode: st.mode(at: now), reason: st.paused ? "paused by the operator" : st.reason,
                   rule: st.rule, until: st.until(at: now), factor: st.factor, configured: shaper.configured(name), operatorLimits: op,
                   effective: shaper.effective(key, now: now), open: state?.open ?? 0, tokens: tokens, updatedAt: state?.updatedAt)
    }

    /// A provider name as it is, a domain as the destination it is shaped as.
    static func destination(_ text: String, _ store: Store, _ settings: TernSettings) throws -> String {
        let name = text.lowercased()
        if settings.shapingDestinations[name] != nil { return name }
        if settings.providerTable.rules.contains(where: { $0.name == name }) { return name }
        guard name.contains(".") else {
            throw fail("\(text) is neither a provider (\(settings.providerTable.rules.map(\.name).sorted().joined(separator: ", "))) nor a domain", code: 64)
        }
        if let host = try store.cachedMX(name, now: nowMillis())?.records.first?.host, let p = settings.providerTable.provider(forMX: host) {
            return p
        }
        return name
    }

    static func change(_ common: DatabaseOptions, _ text: String, event: EventKind, detail: [String: String], reset: Bool,
                       _ edit: @escaping @Sendable (inout StoredShapingOverride) -> Void) async throws {
        let (store, settings) = try openExisting(common)
        defer { store.close() }
        let name = try destination(text, store, settings)
        if name != text.lowercased() { FileHandle.standardError.write(Data("tern: \(text) is shaped as \(name)\n".utf8)) }
        var fields: [(String, JSON)] = [("destination", .string(name)), ("by", .string("operator"))]
        for (k, v) in detail.sorted(by: { $0.key < $1.key }) { fields.append((k, .string(v))) }
        do {
            try await store.changeShapingOverride(destination: name, now: nowMillis(), event: event, detail: JSON.object(fields).text,
                                                  reset: reset, edit)
        } catch {
            throw fail("\(error)", code: 74)
        }
    }

    /// A time as the other tables show it (`time`), "-" for none.
    static func time(_ ms: Int64?) -> String { ms.map { QueueFormatter.isoTime($0) } ?? "-" }

    /// The same time in strict ISO 8601 (JSON).
    static func isoUTC(_ ms: Int64) -> String { QueueFormatter.isoTime(ms).replacingOccurrences(of: " ", with: "T") + "Z" }

    static func limitsText(_ l: ShapingLimits) -> String {
        let short = ["connections": "conn", "messages_per_connection": "msg/conn", "recipients_per_message": "rcpt/msg",
                     "messages_per_second": "msg/s", "messages_per_minute": "msg/min", "messages_per_hour": "msg/h", "burst": "burst",
                     "connections_per_minute": "conn/min", "require_tls": "tls"]
        let p = l.pairs.map { "\(short[$0.0] ?? $0.0)=\($0.1)" }
        return p.isEmpty ? "-" : p.joined(separator: " ")
    }

    static func table(_ rows: [Row], now: Int64) -> String {
        if rows.isEmpty { return "no destination has shaping limits, state or overrides\n" }
        let sources = rows.contains { !$0.source.isEmpty }
        return renderTable(header: ["DESTINATION"] + (sources ? ["SOURCE"] : []) + ["STATE", "CONFIGURED", "EFFECTIVE", "OPEN", "TOKENS", "UNTIL", "REASON"],
                           rows: rows.map { r in
            [r.destination] + (sources ? [r.source.isEmpty ? "-" : r.source] : []) + [r.mode.rawValue, limitsText(r.configured), limitsText(r.effective), "\(r.open)",
             r.tokens.isEmpty ? "-" : r.tokens.map { String(format: "%.1f", $0) }.joined(separator: "/"), time(r.until), r.reason ?? "-"]
        })
    }

    static func limitsJSON(_ l: ShapingLimits) -> JSON {
        .object(l.pairs.map { k, v in (k, k == "require_tls" ? .bool(v == "true") : .int(Int(v) ?? 0)) })
    }

    static func json(_ rows: [Row], now: Int64) -> String {
        JSON.array(rows.map { r -> JSON in
            var f: [(String, JSON)] = [("destination", .string(r.destination))]
            f.append(("source", r.source.isEmpty ? JSON.null : .string(r.source)))
            f.append(("state", .string(r.mode.rawValue)))
            f.append(("reason", r.reason.map(JSON.string) ?? .null))
            f.append(("rule", r.rule.map(JSON.string) ?? .null))
            f.append(("until", r.until.map { JSON.string(isoUTC($0)) } ?? .null))
            f.append(("until_ms", r.until.map { JSON.int64($0) } ?? .null))
            f.append(("factor", .double((r.factor * 100).rounded() / 100)))
            f.append(("configured", limitsJSON(r.configured)))
            f.append(("operator", limitsJSON(r.operatorLimits)))
            f.append(("effective", limitsJSON(r.effective)))
            f.append(("open_connections", .int(r.open)))
            f.append(("tokens", .array(r.tokens.map { JSON.double(($0 * 100).rounded() / 100) })))
            f.append(("updated_at", r.updatedAt.map { JSON.string(isoUTC($0)) } ?? .null))
            return .object(f)
        }).text
    }
}
