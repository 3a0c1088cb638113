//! TensorBoard event files, written without TensorFlow or protobuf code generation.
