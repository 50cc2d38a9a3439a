import Runtime
import SwitchyardJSON
import SwitchyardSupport

/// A problem with a model folder, its configuration or its weights. The message names the file and
/// the key or tensor at fault.
public struct ModelError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Typed access to a JSON configuration object. A missing optional key, or an explicit null, takes
/// the default; a present key of the wrong type is an error that names the file and key.
struct ConfigReader {
    let object: JSONObject
    let file: String

    init(_ value: JSONValue, file: String) throws(ModelError) {
        guard let object = value.objectValue else {
            throw ModelError("\(file): expected a JSON object at the top level, found \(value.typeName)")
        }
        self.object = object
        self.file = file
    }

    init(object: JSONObject, file: String) {
        self.object = object
        self.file = file
    }

    func has(_ key: String) -> Bool { !(object[key]?.isNull ?? true) }

    func value(_ key: String) -> JSONValue? {
        guard let v = object[key], !v.isNull else { return nil }
        return v
    }

    func wrongType(_ key: String, _ expected: String, _ found: JSONValue) -> ModelError {
        ModelError("\(file): key '\(key)' must be \(expected), found \(found.typeName) \(found.serialized())")
    }

    func int(_ key: String) throws(ModelError) -> Int {
        guard let v = value(key) else { throw ModelError("\(file): missing required key '\(key)'") }
        guard let i = v.intValue else { throw wrongType(key, "an integer", v) }
        return i
    }

    func int(_ key: String, default fallback: Int) throws(ModelError) -> Int {
        has(key) ? try int(key) : fallback
    }

    func optionalInt(_ key: String) throws(ModelError) -> Int? {
        has(key) ? try int(key) : nil
    }

    /// A count or a size: positive, and at most `limit`, so that no product of sizes from the same
    /// file can overflow and no allocation is attempted that no machine has.
    func positiveInt(_ key: String, default fallback: Int? = nil, atMost limit: Int = ConfigReader.sizeLimit) throws(ModelError) -> Int {
        let i: Int
        if let fallback { i = try int(key, default: fallback) } else { i = try int(key) }
        guard i > 0 else { throw ModelError("\(file): key '\(key)' must be positive, found \(i)") }
        guard i <= limit else { throw ModelError("\(file): key '\(key)' is \(i), more than \(limit), which no model has") }
        return i
    }

    /// The largest size any config key may give (2^24: the longest context, the largest vocabulary
    /// any model has, and then some). Keys of smaller things give their own, smaller limits.
    static let sizeLimit = 1 << 24

    func double(_ key: String) throws(ModelError) -> Double {
        guard let v = value(key) else { throw ModelError("\(file): missing required key '\(key)'") }
        guard let d = v.doubleValue else { throw wrongType(key, "a number", v) }
        guard d.isFinite else { throw ModelError("\(file): key '\(key)' must be a finite number, found \(d)") }
        return d
    }

    func double(_ key: String, default fallback: Double) throws(ModelError) -> Double {
        has(key) ? try double(key) : fallback
    }

    func optionalDouble(_ key: String) throws(ModelError) -> Double? {
        has(key) ? try double(key) : nil
    }

    func bool(_ key: String, default fallback: Bool) throws(ModelError) -> Bool {
        guard let v = value(key) else { return fallback }
        guard let b = v.boolValue else { throw wrongType(key, "a boolean", v) }
        return b
    }

    func string(_ key: String) throws(ModelError) -> String? {
        guard let v = value(key) else { return nil }
        guard let s = v.stringValue else { throw wrongType(key, "a string", v) }
        return s
    }

    func intArray(_ key: String, default fallback: [Int] = []) throws(ModelError) -> [Int] {
        guard let v = value(key) else { return fallback }
        guard let a = v.arrayValue else { throw wrongType(key, "an array of integers", v) }
        var out: [Int] = []
        for e in a {
            guard let i = e.intValue else { throw wrongType(key, "an array of integers", v) }
            out.append(i)
        }
        return out
    }

    func stringArray(_ key: String) throws(ModelError) -> [String]? {
        guard let v = value(key) else { return nil }
        guard let a = v.arrayValue else { throw wrongType(key, "an array of strings", v) }
        var out: [String] = []
        for e in a {
            guard let s = e.stringValue else { throw wrongType(key, "an array of strings", v) }
            out.append(s)
        }
        return out
    }

    /// A token id or list of token ids (`eos_token_id` may be either).
    func tokenIDs(_ key: String) throws(ModelError) -> [Int]? {
        guard let v = value(key) else { return nil }
        if let i = v.intValue { return [i] }
        return try intArray(key)
    }

    func object(_ key: String) throws(ModelError) -> ConfigReader? {
        guard let v = value(key) else { return nil }
        guard let o = v.objectValue else { throw wrongType(key, "an object", v) }
        return ConfigReader(object: o, file: "\(file) (\(key))")
    }
}
