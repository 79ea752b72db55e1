// swift-tools-version: 6.1
// libFuzzer targets for Tern's parsers (issue 15). Built by tools/fuzz with
// `swift build --sanitize=fuzzer`: each target is a library-mode Swift file
// exporting LLVMFuzzerTestOneInput, linked with libFuzzer's main. The
// protocol and message modules are Tern's own sources (symlinked), so this
// package needs no product from the main package.
import PackageDescription

let fuzz: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "TernFuzz",
    dependencies: [.package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0")],
    targets: [
        .target(name: "TernProtocol", dependencies: [.product(name: "NIOCore", package: "swift-nio")]),
        .target(name: "TernMessage"),
        .executableTarget(name: "fuzz-session", dependencies: ["TernProtocol"], swiftSettings: fuzz),
        .executableTarget(name: "fuzz-command", dependencies: ["TernProtocol"], swiftSettings: fuzz),
        .executableTarget(name: "fuzz-address", dependencies: ["TernProtocol"], swiftSettings: fuzz),
        .executableTarget(name: "fuzz-headers", dependencies: ["TernMessage"], swiftSettings: fuzz),
        .executableTarget(name: "fuzz-reply", dependencies: ["TernProtocol"], swiftSettings: fuzz),
        .executableTarget(name: "fuzz-client", dependencies: ["TernProtocol"], swiftSettings: fuzz),
        .executableTarget(name: "fuzz-dkim", dependencies: ["TernMessage"], swiftSettings: fuzz),
        // The email-authentication parsers: TernMailAuth's pure files (symlinked one by one; the rest needs DNS and crypto).
        .target(name: "TernMailAuthParsers", dependencies: ["TernProtocol", "TernMessage"]),
        .executableTarget(name: "fuzz-auth", dependencies: ["TernMailAuthParsers"], swiftSettings: fuzz),
        // Traffic shaping's pure decision and the bounce classifier (TernScheduler's pure files, symlinked).
        .target(name: "TernShapingPure", dependencies: ["TernProtocol"]),
        .executableTarget(name: "fuzz-shaping", dependencies: ["TernShapingPure", "TernProtocol"], swiftSettings: fuzz),
        // The injection API's request parser and MIME builder (TernHTTP's pure file, symlinked).
        .target(name: "TernInjectPure", dependencies: ["TernProtocol"]),
        .executableTarget(name: "fuzz-inject", dependencies: ["TernInjectPure"], swiftSettings: fuzz),
    ]
)
