// face-api's own networks, run in Node on TensorFlow.js's CPU backend: the references that the
// PyTorch ports are checked against. Called by benchmarks/faceapi_reference.py.
//
//   node benchmarks/faceapi_node.js embed MODEL_DIR IMAGES.bin 150 N
//   node benchmarks/faceapi_node.js tinyface MODEL_DIR IMAGES.bin SIDE N
//
// MODEL_DIR is the npm package's model/ folder; IMAGES.bin holds N square SIDE x SIDE x 3 RGB
// images, row-major bytes. Prints a JSON list with one entry per image:
//   embed     FaceRecognitionNet's 128-D descriptor of each 150x150 face (networks/face_resnet.py);
//   tinyface  TinyFaceDetector's raw output (cells x cells x 25, face-api's NHWC order) and the boxes
//             locateFaces reports at scoreThreshold 0.5 ([x, y, width, height, score] in pixels),
//             each image fed at inputSize SIDE, so that face-api neither pads nor resizes it
//             (networks/tinyface_net.py, inference/tinyface.py).
// Needs @vladmandic/face-api, @tensorflow/tfjs and @tensorflow/tfjs-backend-wasm resolvable from
// the working directory (NODE_PATH works too).
const fs = require('fs');
const path = require('path');

const NETWORKS = {
  embed: { manifest: 'face_recognition_model-weights_manifest.json', make: (faceapi) => new faceapi.FaceRecognitionNet() },
  tinyface: { manifest: 'tiny_face_detector_model-weights_manifest.json', make: (faceapi) => new faceapi.TinyFaceDetector() },
};

async function run(kind, net, image, side) {
  if (kind === 'embed') return Array.from(await net.computeFaceDescriptor(image));
  const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
  const raw = net.forwardInput(await faceapi.toNetInput(image), side);
  const found = await net.locateFaces(image, { inputSize: side, scoreThreshold: 0.5 });
  const out = {
    raw: Array.from(await raw.data()),
    shape: raw.shape,
    boxes: found.map((d) => [d.box.x, d.box.y, d.box.width, d.box.height, d.score]),
  };
  raw.dispose();
  return out;
}

async function main() {
  const [kind, modelDir, imagesPath, sideText, countText] = process.argv.slice(2);
  const side = Number(sideText);
  const count = Number(countText);
  if (!NETWORKS[kind] || !modelDir || !imagesPath || !Number.isInteger(side) || !Number.isInteger(count) || count < 1) {
    console.error('usage: node faceapi_node.js embed|tinyface MODEL_DIR IMAGES.bin SIDE N');
    process.exit(2);
  }
  const tf = require('@tensorflow/tfjs');
  const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
  await tf.setBackend('cpu'); // plain float32 JavaScript kernels: no native or GPU code involved
  await tf.ready();
  const manifest = JSON.parse(fs.readFileSync(path.join(modelDir, NETWORKS[kind].manifest)));
  const weights = fs.readFileSync(path.join(modelDir, manifest[0].paths[0]));
  const buffer = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength);
  const net = NETWORKS[kind].make(faceapi);
  net.loadFromWeightMap(tf.io.decodeWeights(buffer, manifest[0].weights)); // value = min + scale * q
  const bytes = fs.readFileSync(imagesPath);
  const size = side * side * 3;
  if (bytes.length !== count * size) throw new Error(`${imagesPath}: ${bytes.length} bytes, expected ${count * size}`);
  const out = [];
  for (let i = 0; i < count; i += 1) {
    const image = tf.tensor3d(new Uint8Array(bytes.subarray(i * size, (i + 1) * size)), [side, side, 3], 'int32');
    out.push(await run(kind, net, image, side));
    image.dispose();
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => { console.error(String(err && err.stack || err)); process.exit(1); });
