// Every setting of `tern serve`, declared once (issue 16 item 6): its TOML
// key, its flag if it has one, its type, its bounds, one line of help, how
// to read it from and write it into TernSettings. Derived from this table:
// the keys the TOML file may hold (anything else is an error), applying a
// file and flags, the per-setting validation, `tern config show` (the
// effective value and where it came from), the help text of serve's flags,
// and the reference docs/configuration.md (tools/gen-config-docs; a test
// fails when the file is stale). A setting's default is the value of
// `TernSettings()`, which takes it from the component that owns it.
//
// apple/swift-configuration 1.4.0 was considered: it reads keys through
// providers (environment, command line, JSON, YAML, plist) with a default
// at each call site, which does not fit here — it has no TOML provider,
// Tern's flags are ArgumentParser's (help, validation, --help output), and
// a reader has no declarations to generate a reference or a `show` from.

import Foundation
import NIOSSL
import TernDelivery
import TernListener
import TernProtocol
import TernRouting

/// A setting's value in a type-neutral form: what TOML holds and flags give.
public enum SettingValue: Equatable, Sendable {
    case int(Int)
    case bool(Bool)
    case string(String)
    case strings([String])

    /// As written in TOML.
    public var toml: String {
        switch self {
        case .int(let i): return String(i)
        case .bool(let b): return b ? "true" : "false"
        case .string(let s): return SettingValue.quoted(s)
        case .strings(let a): return "[" + a.map(SettingValue.quoted).joined(separator: ", ") + "]"
        }
    }

    static func quoted(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}

public struct Setting: Sendable {
    public enum Kind: Sendable, Equatable {
        case integer(unit: String)
        case boolean
        case text
        case list
        case choice([String])

        var name: String {
            switch self {
            case .integer(let unit): return unit.isEmpty ? "integer" : "integer (\(unit))"
            case .boolean: return "boolean"
            case .text: return "string"
            case .list: return "array of strings"
            case .choice(let c): return c.joined(separator: " | ")
            }
        }
    }

    /// `table.key`, or `key` at the top level.
    public let key: String
    public let kind: Kind
    /// The long flag of `tern serve` (and `tern config show`), without `--`.
    public let flag: String?
    public let help: String
    /// Bounds of an integer.
    public let range: ClosedRange<Int>?
    /// Shown in the reference instead of the computed default (host names, paths that depend on the user).
    public let defaultText: String?
    /// For the reference's example file, when the default makes a poor one.
    public let example: SettingValue?
    let get: @Sendable (TernSettings) -> SettingValue
    let set: @Sendable (inout TernSettings, SettingValue) throws -> Void

    public var table: String? { key.contains(".") ? String(key.prefix { $0 != "." }) : nil }
    public var name: String { table.map { String(key.dropFirst($0.count + 1)) } ?? key }
}

// MARK: - Builders

extension Setting {
    static func int<T: BinaryInteger & Sendable>(_ key: String, _ path: WritableKeyPath<TernSettings, T> & Sendable, unit: String = "",
                                                 scale: T = 1, range: ClosedRange<Int> = 0...Int.max, flag: String? = nil,
                                                 example: Int? = nil, _ help: String) -> Setting {
        Setting(key: key, kind: .integer(unit: unit), flag: flag, help: help, range: range, defaultText: nil, example: example.map { .int($0) },
                get: { .int(Int($0[keyPath: path] / scale)) },
                set: { s, v in
                    guard case .int(let i) = v else { throw ConfigError("'\(key)' must be a non-negative integer") }
                    guard range.contains(i) else { throw ConfigError(Setting.outOfRange(key, range)) }
                    s[keyPath: path] = T(i) * scale
                })
    }

    static func outOfRange(_ key: String, _ range: ClosedRange<Int>) -> String {
        range.upperBound == Int.max ? "\(key) must be at least \(range.lowerBound)" : "\(key) must be \(range.lowerBound)-\(range.upperBound)"
    }

    static func bool(_ key: String, _ path: WritableKeyPath<TernSettings, Bool> & Sendable, _ help: String) -> Setting {
        Setting(key: key, kind: .boolean, flag: nil, help: help, range: nil, defaultText: nil, example: nil,
                get: { .bool($0[keyPath: path]) },
                set: { s, v in
                    guard case .bool(let b) = v else { throw ConfigError("'\(key)' must be true or false") }
                    s[keyPath: path] = b
                })
    }

    static func string(_ key: String, _ path: WritableKeyPath<TernSettings, String> & Sendable, flag: String? = nil,
                       defaultText: String? = nil, example: String? = nil, check: @escaping @Sendable (String) throws -> String = { $0 },
                       _ help: String) -> Setting {
        Setting(key: key, kind: .text, flag: flag, help: help, range: nil, defaultText: defaultText, example: example.map { .string($0) },
                get: { .string($0[keyPath: path]) },
                set: { s, v in
                    guard case .string(let text) = v else { throw ConfigError("'\(key)' must be a string") }
                    s[keyPath: path] = try check(text)
                })
    }

    static func optional(_ key: String, _ path: WritableKeyPath<TernSettings, String?> & Sendable, flag: String? = nil,
                         example: String? = nil, _ help: String) -> Setting {
        Setting(key: key, kind: .text, flag: flag, help: help, range: nil, defaultText: "none", example: example.map { .string($0) },
                get: { $0[keyPath: path].map { .string($0) } ?? .string("") },
                set: { s, v in
                    guard case .string(let text) = v else { throw ConfigError("'\(key)' must be a string") }
                    s[keyPath: path] = text.isEmpty ? nil : text
                })
    }

    static func list<T>(_ key: String, _ path: WritableKeyPath<TernSettings, [T]> & Sendable, flag: String? = nil, example: [String]? = nil,
                        parse: @escaping @Sendable (String) throws -> T, show: @escaping @Sendable (T) -> String, _ help: String) -> Setting {
        Setting(key: key, kind: .list, flag: flag, help: help, range: nil, defaultText: nil, example: example.map { .strings($0) },
                get: { .strings($0[keyPath: path].map(show)) },
                set: { s, v in
                    guard case .strings(let items) = v else { throw ConfigError("'\(key)' must be an array of strings") }
                    s[keyPath: path] = try items.map(parse)
                })
    }

    static func choice<T: RawRepresentable & CaseIterable & SendableMetatype>(_ key: String, _ path: WritableKeyPath<TernSettings, T> & Sendable,
                                                           flag: String? = nil, _ help: String) -> Setting where T.RawValue == String {
        let names = T.allCases.map(\.rawValue)
        return Setting(key: key, kind: .choice(names), flag: flag, help: help, range: nil, defaultText: nil, example: nil,
                       get: { .string($0[keyPath: path].rawValue) },
                       set: { s, v in
                           guard case .string(let text) = v, let value = T(rawValue: text) else {
                               throw ConfigError("'\(key)' must be one of \(names.joined(separator: ", "))")
                           }
                           s[keyPath: path] = value
                       })
    }
}

// MARK: - Text forms of structured values

extension ListenAddress {
    /// `[ROLE@]HOST:PORT` as `--listen` takes it.
    var text: String {
        let host = host.contains(":") ? "[\(host)]" : host
        return (role == .relay ? "" : "\(role.rawValue)@") + "\(host):\(port)"
    }
}

extension StaticRoute {
    var text: String {
        let h = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        return "\(domain)=\(h)" + (port.map { ":\($0)" } ?? "")
    }
}
