#!/usr/bin/env bash
# Make the example clips in examples/audio/ with espeak-ng (apt-get install espeak-ng):
# short English sentences spoken at different pitch and rate, 16-bit mono WAV at 22,050 Hz.
# Usage: examples/make_examples.sh OUTPUT_FOLDER
set -euo pipefail
out=${1:?usage: $0 OUTPUT_FOLDER}
mkdir -p "$out"
say() {  # name pitch(0-99) rate(words/min) amplitude(0-200) text
  espeak-ng -v en -p "$2" -s "$3" -a "$4" -w "$out/$1.wav" "$5"
}
say calm_low_slow      30 130 100 "The meeting is at nine."
say excited_high_fast  85 210 180 "We won! I can't believe it!"
say flat_mid           50 160 100 "Please leave the parcel by the door."
say sad_low_slow       20 105  70 "Nobody came."
say question_high      75 170 120 "Are you really going to leave now?"
say short_word         60 175 140 "Stop."
