#!/bin/sh
# switch_venv.sh NAME VENV: point VENV (a symlink) at venvs/NAME, next to it, in one rename.
#
# Services and commands run from VENV; its scripts' #! lines name the real venvs/NAME/bin/python,
# so a process keeps the venv it started from. The venv VENV pointed at before is kept (services
# run from it until their restart); older ones are removed. A VENV that is still a directory (fedfhe
# installed before venvs/ existed) becomes venvs/previous; until their restart, services started
# from it import from the new venv (their #! lines name VENV), as they did after an in-place install.
set -eu
name=$1
venv=${2%/}
venvs=$(dirname "$venv")/venvs
[ -f "$venvs/$name/.fedfhe-installed" ] || { echo "switch_venv: $venvs/$name is not a finished install" >&2; exit 1; }
keep=""
if [ -L "$venv" ]; then
  keep=$(basename "$(readlink "$venv")")
elif [ -d "$venv" ]; then
  rm -rf "$venvs/previous"
  mv -T "$venv" "$venvs/previous"
  keep=previous
fi
ln -sfn "venvs/$name" "$venv.next"
mv -T "$venv.next" "$venv"
for dir in "$venvs"/*; do
  old=$(basename "$dir")
  if [ "$old" != "$name" ] && [ "$old" != "$keep" ]; then
    rm -rf "$dir"
  fi
done
