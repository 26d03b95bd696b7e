_orchestra_completion() {
    local IFS=$'
'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \
                   COMP_CWORD=$COMP_CWORD \
                   _ORCHESTRA_COMPLETE=complete_bash $1 ) )
    return 0
}

complete -o default -o nosort -F _orchestra_completion orchestra
