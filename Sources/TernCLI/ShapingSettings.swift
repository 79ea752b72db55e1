// Traffic shaping and bounce classification in the configuration (issue
// 18): `[shaping]` (on or off, the climb back, and the limits every
// destination gets), `[[shaping.destination]]` (limits of one provider or
// domain), `[[throttle_rule]]` (automation rules, before the shipped ones),
// `[[bounce_rule]]` (categories, before the shipped rules) and
// `delivery.suppress_categories`.

import Foundation
import TernScheduler
import TOMLKit

extension TernSettings {
    /// Limit keys of `[shaping]` and `[[shaping.destination]]`: 0 is "no limit".
    static let shapingLimitSettings: [Setting] = [
        ("connections", "concurrent connections to one destination"),
        ("messages_per_connection", "messages one connection carries"),
        ("recipients_per_message", "recipients per transaction (a message with more is sent in several)"),
        ("messages_per_second", "a token bucket: messages per second…"),
        ("messages_per_minute", "…per minute…"),
        ("messages_per_hour", "…per hour"),
        ("burst", "tokens a message bucket holds (how many may go at once; default: the bucket's own count)"),
        ("connections_per_minute", "new connections per minute"),
    ].map { key, help in
        Setting(key: "shaping.\(key)", kind: .integer(unit: ""), flag: nil, help: "\(help); 0: no limit", range: nil, defaultText: nil, example: nil,
                get: { s in
                    let l = s.shapingDefaults
                    let v: Int? = switch key {
                    case "connections": l.connections
                    case "messages_per_connection": l.messagesPerConnection
                    case "recipients_per_message": l.recipientsPerMessage
                    case "messages_per_second": l.messagesPerSecond
                    case "messages_per_minute": l.messagesPerMinute
                    case "messages_per_hour": l.messagesPerHour
                    case "burst": l.burst
                    default: l.connectionsPerMinute
                    }
                    return .int(v ?? 0)
                },
                set: { s, v in
                    guard case .int(let i) = v else { throw ConfigError("'shaping.\(key)' must be a non-negative integer") }
                    try s.shapingDefaults.set(key, i == 0 ? "" : "\(i)")
                })
    }

    static let shaping: [Setting] = [
        .bool("shaping.enabled", \.shapingEnabled, "pace delivery per destination (limits, throttling rules); false: only delivery.* limits"),
        .bool("shaping.shipped_rules", \.shippedThrottleRules, "use the shipped throttling rules (Gmail, Microsoft, Yahoo, …) after your own"),
        .int("shaping.ramp_step", \.rampStepPercent, unit: "percent", range: 1...100,
             "after a throttle, limits climb back by this share of the configured values…"),
        .int("shaping.ramp_interval", \.rampIntervalSeconds, unit: "seconds", range: 1...Int.max, "…once per this long…"),
        .int("shaping.ramp_successes", \.rampSuccesses, range: 1...Int.max, "…or after this many deliveries in a row"),
        .bool("shaping.require_tls", \.shapingRequireTLS, "connections to every destination must use TLS (or wait)"),
    ] + shapingLimitSettings

    /// The shaping engine's configuration these settings describe.
    public var shapingConfig: ShapingConfig {
        var c = ShapingConfig()
        c.defaults = shapingDefaults
        if shapingRequireTLS { c.defaults.requireTLS = true }
        c.destinations = shapingDestinations
        c.rules = throttleRules + (shippedThrottleRules ? ShippedThrottleRules.all : [])
        c.rampStep = Double(rampStepPercent) / 100
        c.rampIntervalMillis = rampIntervalSeconds * 1000
        c.rampSuccesses = rampSuccesses
        return c
    }

    public var classifier: BounceClassifier { BounceClassifier(custom: bounceRules) }

    /// Limit keys as TOML lines.
    static func limitsTOML(_ l: ShapingLimits) -> String {
        l.pairs.map { "\($0.0) = \($0.1)\n" }.joined()
    }

    /// A matcher's keys as TOML lines.
    static func matcherTOML(_ m: ReplyMatcher) -> String {
        var out = ""
        switch m.code {
        case .exact(let c)?: out += "code = \(c)\n"
        case .klass(let k)?: out += "code = \"\(k)xx\"\n"
        case nil: break
        }
        if let e = m.enhanced { out += "enhanced = \(SettingValue.quoted(e))\n" }
        if let p = m.pattern { out += "pattern = \(SettingValue.quoted(p))\n" }
        return out
    }

    /// `30`, `"30s"`, `"10m"`, `"1h"`, `"2d"` → milliseconds.
    static func duration(_ raw: any TOMLValueConvertible, _ key: String) throws -> Int64 {
        if let i = raw.int, i >= 0 { return Int64(i) * 1000 }
        guard let s = raw.string, let ms = TernSettings.duration(text: s) else {
            throw ConfigError("'\(key)' must be seconds or a duration such as \"30s\", \"10m\", \"1h\"")
        }
        return ms
    }

    static func duration(text s: String) -> Int64? {
        let t = s.trimmingCharacters(in: .whitespaces)
        guard let unit = t.last else { return nil }
        let scale: Int64? = switch unit {
        case "s": 1000
        case "m": 60_000
        case "h": 3_600_000
        case "d": 86_400_000
        default: nil
        }
        if let scale, let n = Int64(t.dropLast()), n >= 0 { return n * scale }
        return Int64(t).map { $0 * 1000 }
    }

    /// Limit keys of a table (`[[shaping.destination]]`, a `limit` rule).
    static func limits(_ t: TOMLTable, _ where_: String, skipping: Set<String>) throws -> ShapingLimits {
        var l = ShapingLimits()
        for key in t.keys where !skipping.contains(key) {
            guard ShapingLimits.keys.contains(key) else {
                throw ConfigError("unknown key '\(where_).\(key)' (known: \((skipping.union(ShapingLimits.keys)).sorted().joined(separator: ", ")))")
            }
            let raw = t[key]!
            let text: String
            if let b = raw.bool { text = "\(b)" } else if let i = raw.int { text = i == 0 ? "" : "\(i)" } else {
                throw ConfigError("'\(where_).\(key)' must be a number\(key == "require_tls" ? " or true/false" : "")")
            }
            do { try l.set(key, text) } catch { throw ConfigError("'\(where_).\(key)': \(error)") }
        }
        return l
    }

    /// `[[shaping.destination]]` tables: `name` (a provider or a domain) and limits.
    static func shapingDestinationTables(_ value: any TOMLValueConvertible) throws -> [String: ShapingLimits] {
        guard let array = value.array else { throw ConfigError("'shaping.destination' must be an array of tables ([[shaping.destination]])") }
        var out: [String: ShapingLimits] = [:]
        for item in array {
            guard let t = item.table else { throw ConfigError("'shaping.destination' must be an array of tables ([[shaping.destination]])") }
            guard let name = t["name"]?.string?.lowercased(), !name.isEmpty, !name.contains(" ") else {
                throw ConfigError("a [[shaping.destination]] needs a 'name': a provider (google, microsoft, …) or a domain")
            }
            guard out[name] == nil else { throw ConfigError("[[shaping.destination]] \(name) is given twice") }
            out[name] = try limits(t, "shaping.destination", skipping: ["name"])
        }
        return out
    }

    static func matcher(_ t: TOMLTable, _ where_: String) throws -> ReplyMatcher {
        var code: ReplyMatcher.Code? = nil
        if let raw = t["code"] {
            let text = raw.int.map { "\($0)" } ?? raw.string ?? ""
            guard let c = ReplyMatcher.code(parsing: text) else { throw ConfigError("'\(where_).code' must be a reply code (421) or a class (\"4xx\")") }
            code = c
        }
        do {
            return try ReplyMatcher(code: code, enhanced: t["enhanced"]?.string, pattern: t["pattern"]?.string)
        } catch {
            throw ConfigError("\(where_): \(error)")
        }
    }

    static func category(_ raw: (any TOMLValueConvertible)?, _ key: String) throws -> BounceCategory? {
        guard let raw else { return nil }
        guard let s = raw.string, let c = BounceCategory(rawValue: s) else {
            throw ConfigError("'\(key)' must be one of \(BounceCategory.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return c
    }

    /// `[[throttle_rule]]` tables.
    static func throttleRuleTables(_ value: any TOMLValueConvertible) throws -> [ThrottleRule] {
        guard let array = value.array else { throw ConfigError("'throttle_rule' must be an array of tables ([[throttle_rule]])") }
        let ruleKeys: Set<String> = ["name", "destination", "code", "enhanced", "pattern", "category", "threshold", "action", "factor", "duration"]
        return try array.map { item in
            guard let t = item.table else { throw ConfigError("'throttle_rule' must be an array of tables ([[throttle_rule]])") }
            guard let name = t["name"]?.string, !name.isEmpty else { throw ConfigError("a [[throttle_rule]] needs a 'name'") }
            let w = "throttle_rule \(name)"
            guard t["code"] != nil || t["enhanced"] != nil || t["pattern"] != nil || t["category"] != nil else {
                throw ConfigError("\(w) matches every reply: give a code, enhanced, pattern or category")
            }
            let matcher = try matcher(t, "throttle_rule")
            let category = try category(t["category"], "throttle_rule.category")
            var threshold = 1, window: Int64 = 0
            if let raw = t["threshold"] {
                if let i = raw.int, i >= 1 { threshold = i } else if let s = raw.string {
                    // "5 in 10m"
                    let parts = s.split(separator: " ")
                    guard parts.count == 3, parts[1] == "in", let n = Int(parts[0]), n >= 1, let ms = duration(text: String(parts[2])), ms > 0 else {
                        throw ConfigError("'\(w).threshold' must be a count or \"N in DURATION\" such as \"5 in 10m\"")
                    }
                    threshold = n
                    window = ms
                } else { throw ConfigError("'\(w).threshold' must be a count or \"N in DURATION\"") }
            }
            let duration = try t["duration"].map { try TernSettings.duration($0, "\(w).duration") } ?? 600_000
            let action: ThrottleAction
            switch t["action"]?.string ?? "throttle" {
            case "throttle":
                let f = t["factor"]?.double ?? t["factor"]?.int.map(Double.init) ?? 0.5
                guard f > 0, f < 1 else { throw ConfigError("'\(w).factor' must be between 0 and 1 (0.5 halves the limits)") }
                action = .throttle(factor: f)
            case "suspend": action = .suspend
            case "limit":
                let l = try limits(t, "throttle_rule", skipping: ruleKeys)
                guard l != ShapingLimits() else { throw ConfigError("\(w): a limit rule needs limits (connections = 1, messages_per_minute = 10, …)") }
                action = .limit(l)
            default: throw ConfigError("'\(w).action' must be throttle, limit or suspend")
            }
            if case .limit = action {} else {
                for key in t.keys where !ruleKeys.contains(key) {
                    throw ConfigError("unknown key 'throttle_rule.\(key)' (known: \(ruleKeys.sorted().joined(separator: ", ")); limits with action = \"limit\")")
                }
            }
            return ThrottleRule(name: name, destination: t["destination"]?.string?.lowercased(), matcher: matcher, category: category,
                                threshold: threshold, windowMillis: window, action: action, durationMillis: duration)
        }
    }

    /// `[[bounce_rule]]` tables: a matcher and the category.
    static func bounceRuleTables(_ value: any TOMLValueConvertible) throws -> [BounceRule] {
        guard let array = value.array else { throw ConfigError("'bounce_rule' must be an array of tables ([[bounce_rule]])") }
        return try array.map { item in
            guard let t = item.table else { throw ConfigError("'bounce_rule' must be an array of tables ([[bounce_rule]])") }
            for key in t.keys where !["code", "enhanced", "pattern", "category"].contains(key) {
                throw ConfigError("unknown key 'bounce_rule.\(key)' (known: category, code, enhanced, pattern)")
            }
            guard let c = try category(t["category"], "bounce_rule.category") else { throw ConfigError("a [[bounce_rule]] needs a 'category'") }
            guard t["code"] != nil || t["enhanced"] != nil || t["pattern"] != nil else {
                throw ConfigError("a [[bounce_rule]] needs a code, enhanced or pattern to match")
            }
            return BounceRule(try matcher(t, "bounce_rule"), c)
        }
    }
}
